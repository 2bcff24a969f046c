//! `runnel bench fanout`: one publisher → one server → N subscribers, Runnel against NATS.
//!
//! Both systems get the same [`Workload`](crate::workload::Workload): same payload size,
//! subscriber count, throughput search (unpaced probe, then paced steps bisecting for the
//! highest rate delivered at ≥ 99%), batch size (one flush per [`crate::GSO_SEGMENTS_MAX`]
//! datagrams' worth of messages, what one GSO send carries, or per 1 ms pacing tick) and the
//! same latency rate. Each server runs as its own child process, measured the same way (see
//! [`crate::process`]).
//! NATS messages carry no signatures; Runnel's carry per-message or batch signatures
//! ([`SignatureMode`]), so the comparison favours NATS by that work.

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
}

/// Runs the fan-out benchmark: Runnel first, then NATS, each with its server started and
/// stopped inside this call.
pub fn fanout(options: FanoutOptions) -> Result<FanoutReport, BenchError> {
    if options.subscribers == 0 || options.subscribers > 1000 {
        return Err(BenchError::new(format!("--subscribers {}: use 1..=1000", options.subscribers)));
    }
    if !options.runnel && !options.against_nats {
        return Err(BenchError::new("nothing to run: enable Runnel or --against nats"));
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
    Ok(FanoutReport { options, runnel, nats })
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

    /// One JSON object: `runnel.delivered_per_s`, `nats.delivered_per_s`, `ratio_delivered`,
    /// `runnel.latency_us_p99`, `nats.latency_us_p99`, and the rest of each side's numbers.
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
        })
    }

    /// A table on stdout: one column per system and the Runnel/NATS ratio.
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
        out += &format!("{:<30}{:>16}{:>16}{:>14}\n", "", "runnel", "nats", "runnel/nats");
        for (name, value, decimals) in rows {
            let cell = |result: &Option<SystemResult>| result.as_ref().map_or("-".to_string(), |r| format!("{:.*}", decimals, value(r)));
            let ratio =
                ratio(self.runnel.as_ref().map(value), self.nats.as_ref().map(value)).map_or("-".to_string(), |x| format!("{x:.2}"));
            out += &format!("{name:<30}{:>16}{:>16}{:>14}\n", cell(&self.runnel), cell(&self.nats), ratio);
        }
        for (system, result) in [("runnel", &self.runnel), ("nats", &self.nats)] {
            if let Some(result) = result {
                out += &format!("{system} {}\n", steps_line(result));
            }
        }
        for (system, result) in [("runnel", &self.runnel), ("nats", &self.nats)] {
            for error in result.iter().flat_map(|r| &r.subscriber_errors) {
                out += &format!("{system}: {error}\n");
            }
        }
        out
    }
}
