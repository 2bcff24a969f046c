//! `runnel bench fanout`: one publisher → one server → N subscribers, Runnel against NATS
//! and, with the cargo feature `zenoh`, against Zenoh (peer sessions, no server: see
//! module `zenoh`).
//!
//! Both systems get the same [`Workload`](crate::workload::Workload): same payload size,
//! subscriber count, throughput search (unpaced probe, then paced steps bisecting for the
//! highest rate delivered at ≥ 99%), batch size (one flush per [`crate::GSO_SEGMENTS_MAX`]
//! datagrams' worth of messages, what one GSO send carries, or per 1 ms pacing tick) and the
//! same latency rate. Each server runs as its own child process, measured the same way (see
//! [`crate::process`]).
//! NATS messages carry no signatures; Runnel's carry per-message or batch signatures
//! ([`SignatureMode`]), so the comparison favours NATS by that work; Zenoh's carry none
//! either.

use crate::measure::LatencySummary;
use crate::nats::NatsServer;
use crate::runnel::RunnelNodes;
use crate::workload::{self, Flush, Paced, StepResult, SystemResult, Workload, LATENCY_FLUSH_INTERVAL, SEARCH_STEPS};
use crate::{BenchError, WorkDir};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How the Runnel publisher signs its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SignatureMode {
    /// One secp256k1 signature per message (the default for low rates).
    #[default]
    Single,
    /// One signature per batch over a blake3 Merkle root; each message carries its path.
    Batch,
}

impl SignatureMode {
    pub fn name(self) -> &'static str {
        match self {
            SignatureMode::Single => "single",
            SignatureMode::Batch => "batch",
        }
    }
}

impl std::str::FromStr for SignatureMode {
    type Err = BenchError;
    fn from_str(text: &str) -> Result<Self, BenchError> {
        match text {
            "single" => Ok(SignatureMode::Single),
            "batch" => Ok(SignatureMode::Batch),
            other => Err(BenchError::new(format!("{other:?}: use single or batch"))),
        }
    }
}

/// What to run (`runnel bench fanout` flags).
#[derive(Clone, Debug)]
pub struct FanoutOptions {
    /// `--subscribers N`
    pub subscribers: usize,
    /// `--size BYTES`: payload length (at least 16).
    pub payload_length: usize,
    /// `--duration SECS`: time budget of the throughput search (probe + paced steps, each
    /// `duration / 7`; drains between steps come on top).
    pub duration: Duration,
    /// `--against nats`: also run the NATS baseline.
    pub against_nats: bool,
    /// `--against zenoh`: also run the Zenoh peer (needs the cargo feature `zenoh`).
    pub against_zenoh: bool,
    /// Run the Runnel side (false only to measure the baseline alone).
    pub runnel: bool,
    /// `--signatures single|batch`
    pub signatures: SignatureMode,
    /// Length of the paced latency phase.
    pub latency_duration: Duration,
    /// Send rate of the latency phase.
    pub latency_rate_per_s: u64,
    /// The `nats-server` binary; default: PATH, then /usr/sbin.
    pub nats_server: Option<PathBuf>,
    /// The `runnel` binary started as `runnel node --config FILE`; default: this executable.
    pub runnel_binary: Option<PathBuf>,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        Self {
            subscribers: 1,
            payload_length: 64,
            duration: Duration::from_secs(5),
            against_nats: true,
            against_zenoh: false,
            runnel: true,
            signatures: SignatureMode::Single,
            latency_duration: Duration::from_secs(3),
            latency_rate_per_s: 10_000,
            nats_server: None,
            runnel_binary: None,
        }
    }
}

impl FanoutOptions {
    fn workload(&self) -> Workload {
        Workload {
            subscribers: self.subscribers,
            payload_length: self.payload_length,
            duration: self.duration,
            latency: Paced {
                rate_per_s: self.latency_rate_per_s,
                duration: self.latency_duration,
                flush: Flush::Interval(LATENCY_FLUSH_INTERVAL),
            },
            batch_messages: crate::GSO_SEGMENTS_MAX * crate::messages_per_datagram(self.payload_length),
            samples_max: 100_000,
        }
    }
}

/// Results of one fan-out run.
#[derive(Clone, Debug)]
pub struct FanoutReport {
    pub options: FanoutOptions,
    pub runnel: Option<SystemResult>,
    pub nats: Option<SystemResult>,
    /// Only with `against_zenoh`.
    pub zenoh: Option<SystemResult>,
}

/// What to do when Zenoh is asked for but not compiled in.
pub const ZENOH_NOT_BUILT: &str = "zenoh: this build has no Zenoh peer; build the runnel binary with `cargo build --release -p runnel --features zenoh` (the library alone: `cargo build --release -p runnel-bench --features zenoh`)";

/// Whether this build has the Zenoh peer (cargo feature `zenoh`); if not, the error saying
/// how to build it.
pub fn zenoh_available() -> Result<(), BenchError> {
    if cfg!(feature = "zenoh") {
        Ok(())
    } else {
        Err(BenchError::new(ZENOH_NOT_BUILT))
    }
}

/// Runs the fan-out benchmark: Runnel first, then NATS, then Zenoh, each with its server (for
/// Zenoh: its peer sessions) started and stopped inside this call.
pub fn fanout(options: FanoutOptions) -> Result<FanoutReport, BenchError> {
    if options.subscribers == 0 || options.subscribers > 1000 {
        return Err(BenchError::new(format!("--subscribers {}: use 1..=1000", options.subscribers)));
    }
    if !options.runnel && !options.against_nats && !options.against_zenoh {
        return Err(BenchError::new("nothing to run: enable Runnel or --against nats|zenoh"));
    }
    if options.against_zenoh {
        zenoh_available()?;
    }
    let workload = options.workload();
    let runnel = if options.runnel { Some(run_runnel(&options, &workload)?) } else { None };
    let nats = if options.against_nats {
        let work_dir = WorkDir::create("fanout-nats")?;
        let mut server = NatsServer::start(options.nats_server.as_deref(), options.payload_length, &work_dir.0)?;
        Some(workload::measure(&mut server, &workload)?)
    } else {
        None
    };
    let zenoh = if options.against_zenoh { Some(run_zenoh(&workload)?) } else { None };
    Ok(FanoutReport { options, runnel, nats, zenoh })
}

#[cfg(feature = "zenoh")]
fn run_zenoh(workload: &Workload) -> Result<SystemResult, BenchError> {
    let mut peers = crate::zenoh::ZenohPeers::start()?;
    workload::measure(&mut peers, workload)
}

#[cfg(not(feature = "zenoh"))]
fn run_zenoh(_workload: &Workload) -> Result<SystemResult, BenchError> {
    Err(BenchError::new(ZENOH_NOT_BUILT))
}

fn run_runnel(options: &FanoutOptions, workload: &Workload) -> Result<SystemResult, BenchError> {
    let binary = runnel_binary(options.runnel_binary.as_deref())?;
    let work_dir = WorkDir::create("fanout-runnel")?;
    let mut nodes = RunnelNodes::start(&binary, 1, options.subscribers, options.signatures, &work_dir.0)?;
    workload::measure(&mut nodes, workload)
}

/// The `runnel` binary to start nodes with: the one given, else this executable.
pub fn runnel_binary(explicit: Option<&std::path::Path>) -> Result<PathBuf, BenchError> {
    match explicit {
        Some(path) => Ok(path.to_path_buf()),
        None => std::env::current_exe().map_err(|e| BenchError::new(format!("cannot find this executable to start nodes with: {e}"))),
    }
}

/// A table row: label, the value it shows, decimals.
type TableRow = (&'static str, fn(&SystemResult) -> f64, usize);

/// numerator / denominator when both exist and the denominator is positive.
pub(crate) fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// One search step as JSON.
fn step_json(step: &StepResult) -> Value {
    json!({
        "rate_per_s": step.rate_per_s,
        "published_per_s": step.published_per_s,
        "delivered_per_s": step.delivered_per_s,
        "delivered_in_window_per_s": step.delivered_in_window_per_s,
        "delivered_fraction": step.delivered_fraction,
        "passed": step.passed(),
        "cpu_percent": step.cpu_percent,
        "settle_ms": step.settle_ms,
    })
}

/// One system's result as JSON.
pub fn system_json(result: &SystemResult) -> Value {
    let LatencySummary { samples, p50_us, p99_us, p999_us, max_us } = result.latency;
    json!({
        "delivered_per_s": result.delivered_per_s,
        "published_per_s": result.published_per_s,
        "paced_rate_per_s": result.rate_per_s,
        "delivered_in_window_per_s": result.delivered_in_window_per_s,
        "sent": result.sent,
        "delivered": result.delivered,
        "delivered_fraction": result.delivered_fraction,
        "probe_published_per_s": result.probe.published_per_s,
        "probe_delivered_per_s": result.probe.delivered_per_s,
        "probe_delivered_fraction": result.probe.delivered_fraction,
        "probe_delivered_in_window_per_s": result.probe.delivered_in_window_per_s,
        "search_steps": result.steps.iter().map(step_json).collect::<Vec<_>>(),
        "latency_us_p50": p50_us,
        "latency_us_p99": p99_us,
        "latency_us_p999": p999_us,
        "latency_us_max": max_us,
        "latency_samples": samples,
        "latency_delivered_fraction": result.latency_delivered_fraction,
        "cpu_percent": result.cpu_percent,
        "rss_kib": result.rss_kib,
        "subscriber_errors": result.subscriber_errors,
    })
}

/// [`system_json`] of a system without a server process (Zenoh's peers): the server CPU and
/// RSS fields, its own and each step's, are `null` (not measured) rather than 0.
fn serverless_json(result: &SystemResult) -> Value {
    let mut value = system_json(result);
    let unmeasured = |object: &mut Value| {
        for key in ["cpu_percent", "rss_kib"] {
            if let Some(field) = object.get_mut(key) {
                *field = Value::Null;
            }
        }
    };
    unmeasured(&mut value);
    if let Some(Value::Array(steps)) = value.get_mut("search_steps") {
        steps.iter_mut().for_each(unmeasured);
    }
    value
}

/// The search steps in one line: `rate→delivered fraction` per step, `*` marking the passes.
pub fn steps_line(result: &SystemResult) -> String {
    let steps: Vec<String> = result
        .steps
        .iter()
        .map(|step| {
            let rate = step.rate_per_s.map_or("unpaced".to_string(), |rate| format!("{:.0}/s", rate));
            format!("{rate}->{:.3}{}", step.delivered_fraction, if step.passed() { "*" } else { "" })
        })
        .collect();
    format!("search steps (publish rate -> delivered fraction, * = passed): {}", steps.join("  "))
}

impl FanoutReport {
    /// Runnel delivered msgs/s over NATS delivered msgs/s, when both ran.
    pub fn ratio_delivered(&self) -> Option<f64> {
        ratio(self.runnel.as_ref().map(|r| r.delivered_per_s), self.nats.as_ref().map(|r| r.delivered_per_s))
    }

    /// Runnel delivered msgs/s over Zenoh delivered msgs/s, when both ran.
    pub fn ratio_delivered_zenoh(&self) -> Option<f64> {
        ratio(self.runnel.as_ref().map(|r| r.delivered_per_s), self.zenoh.as_ref().map(|r| r.delivered_per_s))
    }

    /// One JSON object: `runnel.delivered_per_s`, `nats.delivered_per_s`, `ratio_delivered`,
    /// `runnel.latency_us_p99`, `nats.latency_us_p99`, and the rest of each side's numbers;
    /// `zenoh` (null unless it ran) with the same fields, and `ratio_delivered_zenoh`,
    /// `ratio_published_zenoh`, `ratio_probe_delivered_zenoh` (Runnel/Zenoh).
    pub fn to_json(&self) -> Value {
        let o = &self.options;
        json!({
            "scenario": "fanout",
            "subscribers": o.subscribers,
            "size": o.payload_length,
            "duration_s": o.duration.as_secs_f64(),
            "step_s": o.duration.as_secs_f64() / (1 + SEARCH_STEPS) as f64,
            "delivered_fraction_min": workload::DELIVERED_FRACTION_MIN,
            "signatures": o.signatures.name(),
            "latency_rate_per_s": o.latency_rate_per_s,
            "runnel": self.runnel.as_ref().map(system_json),
            "nats": self.nats.as_ref().map(system_json),
            "ratio_delivered": self.ratio_delivered(),
            "ratio_published": ratio(self.runnel.as_ref().map(|r| r.published_per_s), self.nats.as_ref().map(|r| r.published_per_s)),
            "ratio_probe_delivered": ratio(
                self.runnel.as_ref().map(|r| r.probe.delivered_per_s),
                self.nats.as_ref().map(|r| r.probe.delivered_per_s)
            ),
            "zenoh": self.zenoh.as_ref().map(serverless_json),
            "ratio_delivered_zenoh": self.ratio_delivered_zenoh(),
            "ratio_published_zenoh": ratio(self.runnel.as_ref().map(|r| r.published_per_s), self.zenoh.as_ref().map(|r| r.published_per_s)),
            "ratio_probe_delivered_zenoh": ratio(
                self.runnel.as_ref().map(|r| r.probe.delivered_per_s),
                self.zenoh.as_ref().map(|r| r.probe.delivered_per_s)
            ),
        })
    }

    /// A table on stdout: one column per system and the Runnel/NATS ratio (and, when Zenoh ran,
    /// a Zenoh column and the Runnel/Zenoh ratio).
    pub fn print_table(&self) {
        print!("{}", self.table());
    }

    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "fanout: 1 publisher -> 1 server -> {} subscribers, {} B payload, throughput search in {:.1} s (unpaced probe + up to {SEARCH_STEPS} paced steps of {:.2} s, pass = {}% delivered), then {:.0} s at {} msgs/s, signatures {}\n",
            o.subscribers,
            o.payload_length,
            o.duration.as_secs_f64(),
            o.duration.as_secs_f64() / (1 + SEARCH_STEPS) as f64,
            workload::DELIVERED_FRACTION_MIN * 100.0,
            o.latency_duration.as_secs_f64(),
            o.latency_rate_per_s,
            o.signatures.name()
        );
        let rows: [TableRow; 12] = [
            ("delivered msgs/s", |r| r.delivered_per_s, 0),
            ("publish msgs/s (found rate)", |r| r.published_per_s, 0),
            ("delivered fraction", |r| r.delivered_fraction, 4),
            ("unpaced publish msgs/s", |r| r.probe.published_per_s, 0),
            ("unpaced delivered msgs/s", |r| r.probe.delivered_per_s, 0),
            ("unpaced delivered fraction", |r| r.probe.delivered_fraction, 4),
            ("latency p50 us", |r| r.latency.p50_us, 1),
            ("latency p99 us", |r| r.latency.p99_us, 1),
            ("latency max us", |r| r.latency.max_us, 1),
            ("latency delivered fraction", |r| r.latency_delivered_fraction, 4),
            ("server CPU % (found rate)", |r| r.cpu_percent, 1),
            ("server RSS MiB (found rate)", |r| r.rss_kib as f64 / 1024.0, 1),
        ];
        let with_zenoh = self.zenoh.is_some();
        out += &format!("{:<30}{:>16}{:>16}{:>14}", "", "runnel", "nats", "runnel/nats");
        if with_zenoh {
            out += &format!("{:>16}{:>14}", "zenoh", "runnel/zenoh");
        }
        out += "\n";
        for (name, value, decimals) in rows {
            let cell = |result: &Option<SystemResult>| result.as_ref().map_or("-".to_string(), |r| format!("{:.*}", decimals, value(r)));
            let ratio_to = |baseline: &Option<SystemResult>| {
                ratio(self.runnel.as_ref().map(value), baseline.as_ref().map(value)).map_or("-".to_string(), |x| format!("{x:.2}"))
            };
            out += &format!("{name:<30}{:>16}{:>16}{:>14}", cell(&self.runnel), cell(&self.nats), ratio_to(&self.nats));
            if with_zenoh {
                // Zenoh's peers have no server process to measure (see `crate::zenoh`).
                let (zenoh, ratio) = if name.starts_with("server ") {
                    ("-".to_string(), "-".to_string())
                } else {
                    (cell(&self.zenoh), ratio_to(&self.zenoh))
                };
                out += &format!("{zenoh:>16}{ratio:>14}");
            }
            out += "\n";
        }
        let systems = [("runnel", &self.runnel), ("nats", &self.nats), ("zenoh", &self.zenoh)];
        for (system, result) in systems {
            if let Some(result) = result {
                out += &format!("{system} {}\n", steps_line(result));
            }
        }
        if with_zenoh {
            out += "zenoh: peer sessions in this process (publisher's session listening, subscribers connected over loopback TCP), no server process: server CPU and RSS not measured\n";
        }
        for (system, result) in systems {
            for error in result.iter().flat_map(|r| &r.subscriber_errors) {
                out += &format!("{system}: {error}\n");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(delivered_per_s: f64) -> SystemResult {
        let step = StepResult { delivered_per_s, delivered_fraction: 1.0, cpu_percent: 50.0, ..StepResult::default() };
        SystemResult {
            delivered_per_s,
            cpu_percent: 50.0,
            rss_kib: 1024,
            probe: step.clone(),
            steps: vec![step],
            ..SystemResult::default()
        }
    }

    // Goal: a Zenoh result gets its own JSON object and Runnel/Zenoh ratios next to the NATS
    // ones (which keep their names), its unmeasured server fields are null, and the table
    // grows a Zenoh column only when Zenoh ran.
    #[test]
    fn zenoh_in_json_and_table() {
        let mut report = FanoutReport {
            options: FanoutOptions { against_zenoh: true, ..FanoutOptions::default() },
            runnel: Some(result(300.0)),
            nats: Some(result(200.0)),
            zenoh: Some(result(100.0)),
        };
        let json = report.to_json();
        assert_eq!(json["ratio_delivered"], 1.5);
        assert_eq!(json["ratio_delivered_zenoh"], 3.0);
        assert_eq!(json["zenoh"]["delivered_per_s"], 100.0);
        assert!(json["zenoh"]["cpu_percent"].is_null() && json["zenoh"]["search_steps"][0]["rss_kib"].is_null());
        assert_eq!(json["nats"]["cpu_percent"], 50.0);
        let table = report.table();
        assert!(table.lines().nth(1).unwrap().ends_with("zenoh  runnel/zenoh"), "{table}");
        assert!(table.contains("zenoh search steps"));
        report.zenoh = None;
        assert!(report.to_json()["zenoh"].is_null() && report.to_json()["ratio_delivered_zenoh"].is_null());
        assert!(!report.table().contains("zenoh"));
    }
}
