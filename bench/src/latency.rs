//! `runnel bench latency`: one-hop latency, publisher → one server → one subscriber, each
//! system in its natural low-latency mode.
//!
//! Both publishers flush after every message ([`Flush::EveryMessage`]): the NATS client writes
//! each `PUB` to its socket at once (TCP_NODELAY), the Runnel client (`UdpClient`, as shipped)
//! signs and sends each message in its own datagram, so neither side waits for a batch or a
//! timer of the benchmark's making. The phases and the latency sampling are the fan-out ones
//! ([`workload::measure_latency`]): readiness, a warm-up of [`WARMUP`] at the measured rate
//! that is not sampled, then `--duration` seconds paced at `--rate`; the subscriber records
//! receive − send time (one monotonic clock, stamped into the payload) for every message.
//!
//! Runnel messages carry signatures and NATS messages none, so on the same machine Runnel's
//! floor is NATS's latency plus one signature and one verification. The run measures both
//! here ([`signature_cost`]) and reports the target `runnel p50 <= nats p50 + sign + verify`
//! and `runnel p99 <= nats p99`.
//!
//! Limits: loopback only; publisher, server and subscriber share this machine's cores; a
//! publisher that cannot keep the rate (per-message signing) sends what it can, and
//! `published_per_s` says so.

use crate::fanout::{ratio, runnel_binary, SignatureMode};
use crate::measure::{LatencySamples, LatencySummary};
use crate::nats::NatsServer;
use crate::runnel::RunnelNodes;
use crate::workload::{self, Flush, LatencyResult, LatencyWorkload, Paced};
use crate::{BenchError, WorkDir};
use runnel_proto::crypto::{keccak256, PublisherKey, Verifier};
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Sending before the measured phase, not sampled.
pub const WARMUP: Duration = Duration::from_millis(500);
/// Signatures made and checked to time `sign_us` and `verify_us`.
pub const SIGNATURE_SAMPLES: usize = 2000;
/// Most latency samples kept per system (16 MB); extras are counted, not kept.
const SAMPLES_MAX: usize = 2_000_000;
/// Highest `--rate` accepted: beyond it a publisher flushing every message measures its own
/// syscalls, not latency.
pub const RATE_MAX_PER_S: u64 = 200_000;

/// What to run (`runnel bench latency` flags).
#[derive(Clone, Debug)]
pub struct LatencyOptions {
    /// `--size BYTES`: payload length (at least 16).
    pub payload_length: usize,
    /// `--rate MSGS_PER_S`: paced publish rate.
    pub rate_per_s: u64,
    /// `--duration SECS`: the measured phase, after [`WARMUP`].
    pub duration: Duration,
    /// `--against nats`: also run the NATS baseline.
    pub against_nats: bool,
    /// `--signatures single|batch` (batch with a flush per message signs batches of one).
    pub signatures: SignatureMode,
    /// The `nats-server` binary; default: PATH, then /usr/sbin.
    pub nats_server: Option<PathBuf>,
    /// The `runnel` binary started as `runnel node --config FILE`; default: this executable.
    pub runnel_binary: Option<PathBuf>,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        Self {
            payload_length: 64,
            rate_per_s: 1000,
            duration: Duration::from_secs(5),
            against_nats: false,
            signatures: SignatureMode::Single,
            nats_server: None,
            runnel_binary: None,
        }
    }
}

/// Median cost of one signature and one verification on this machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignatureCost {
    /// One secp256k1 EIP-191 signature ([`PublisherKey::sign_digest`]).
    pub sign_us: f64,
    /// One public-key recovery and address compare ([`Verifier::check_signed_digest`] of a
    /// publisher it has not seen): what a node pays for a publisher's first signature.
    pub verify_us: f64,
    /// One verification against the cached public key: what a node pays for a publisher it
    /// already knows (every later message of a chain).
    pub verify_known_key_us: f64,
    pub samples: usize,
}

/// Times `samples` signatures and checks, each with a fresh key and a fresh [`Verifier`]
/// (made outside the timed part), so every `verify_us` sample is a real ECDSA recovery and
/// none hits a cache; the same check repeated then times the cached-key path.
pub fn signature_cost(samples: usize) -> SignatureCost {
    let mut sign = LatencySamples::new(samples);
    let mut verify = LatencySamples::new(samples);
    let mut verify_known_key = LatencySamples::new(samples);
    for index in 0..samples {
        let key = PublisherKey::generate();
        let digest = keccak256(&[&index.to_le_bytes()]);
        let mut verifier = Verifier::new(1, 1);
        let started = Instant::now();
        let signature = black_box(key.sign_digest(black_box(&digest)));
        sign.record(started.elapsed().as_nanos() as u64);
        for samples in [&mut verify, &mut verify_known_key] {
            let started = Instant::now();
            let outcome = black_box(verifier.check_signed_digest(&key.address(), &digest, &signature));
            samples.record(started.elapsed().as_nanos() as u64);
            assert_eq!(outcome, Ok(()), "a signature just made must verify");
        }
    }
    let median_us = |samples: LatencySamples| LatencySummary::from_samples(vec![samples]).p50_us;
    SignatureCost { sign_us: median_us(sign), verify_us: median_us(verify), verify_known_key_us: median_us(verify_known_key), samples }
}

/// The report's targets, computed from the NATS side and the signature cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// NATS p50 + sign_us + verify_us: NATS's latency plus the signature work Runnel does.
    pub p50_target_us: f64,
    /// Runnel p50 <= `p50_target_us`.
    pub p50_met: bool,
    /// Runnel p99 <= NATS p99.
    pub p99_met: bool,
}

/// Results of one latency run.
#[derive(Clone, Debug)]
pub struct LatencyReport {
    pub options: LatencyOptions,
    pub signature_cost: SignatureCost,
    pub runnel: LatencyResult,
    pub nats: Option<LatencyResult>,
}

/// Runs the latency benchmark: the signature cost first (before any server loads the
/// machine), then Runnel, then NATS, each with its server started and stopped inside this call.
pub fn latency(options: LatencyOptions) -> Result<LatencyReport, BenchError> {
    if options.rate_per_s == 0 || options.rate_per_s > RATE_MAX_PER_S {
        return Err(BenchError::new(format!("--rate {}: use 1..={RATE_MAX_PER_S} msgs/s", options.rate_per_s)));
    }
    let signature_cost = signature_cost(SIGNATURE_SAMPLES);
    let workload = LatencyWorkload {
        payload_length: options.payload_length,
        warmup: WARMUP,
        latency: Paced { rate_per_s: options.rate_per_s, duration: options.duration, flush: Flush::EveryMessage },
        samples_max: SAMPLES_MAX,
    };
    let runnel = {
        let binary = runnel_binary(options.runnel_binary.as_deref())?;
        let work_dir = WorkDir::create("latency-runnel")?;
        let mut nodes = RunnelNodes::start(&binary, 1, 1, options.signatures, &work_dir.0)?;
        workload::measure_latency(&mut nodes, &workload)?
    };
    let nats = if options.against_nats {
        let work_dir = WorkDir::create("latency-nats")?;
        let mut server = NatsServer::start(options.nats_server.as_deref(), options.payload_length, &work_dir.0)?;
        Some(workload::measure_latency(&mut server, &workload)?)
    } else {
        None
    };
    Ok(LatencyReport { options, signature_cost, runnel, nats })
}

/// One system's result as JSON (keys as in the fan-out report where they mean the same).
fn result_json(result: &LatencyResult) -> Value {
    let LatencySummary { samples, p50_us, p99_us, p999_us, max_us } = result.latency;
    json!({
        "latency_us_p50": p50_us,
        "latency_us_p99": p99_us,
        "latency_us_p999": p999_us,
        "latency_us_max": max_us,
        "latency_samples": samples,
        "samples_dropped": result.samples_dropped,
        "sent": result.sent,
        "published_per_s": result.published_per_s,
        "delivered_fraction": result.delivered_fraction,
        "subscriber_errors": result.subscriber_errors,
    })
}

/// A table row: label and the value it shows, with its decimals.
type TableRow = (&'static str, fn(&LatencyResult) -> f64, usize);

impl LatencyReport {
    /// The targets, when NATS ran.
    pub fn target(&self) -> Option<Target> {
        let nats = &self.nats.as_ref()?.latency;
        let p50_target_us = nats.p50_us + self.signature_cost.sign_us + self.signature_cost.verify_us;
        let runnel = &self.runnel.latency;
        Some(Target { p50_target_us, p50_met: runnel.p50_us <= p50_target_us, p99_met: runnel.p99_us <= nats.p99_us })
    }

    fn latency_ratio(&self, value: fn(&LatencySummary) -> f64) -> Option<f64> {
        ratio(Some(value(&self.runnel.latency)), self.nats.as_ref().map(|n| value(&n.latency)))
    }

    /// One JSON object: `runnel.latency_us_p50`/`p99`, `nats.…` (null without NATS),
    /// `sign_us`, `verify_us`, the `target` block (null without NATS) and the options.
    pub fn to_json(&self) -> Value {
        let o = &self.options;
        let cost = &self.signature_cost;
        json!({
            "scenario": "latency",
            "size": o.payload_length,
            "rate_per_s": o.rate_per_s,
            "duration_s": o.duration.as_secs_f64(),
            "warmup_s": WARMUP.as_secs_f64(),
            "flush": "every_message",
            "signatures": o.signatures.name(),
            "runnel": result_json(&self.runnel),
            "nats": self.nats.as_ref().map(result_json),
            "sign_us": cost.sign_us,
            "verify_us": cost.verify_us,
            "verify_known_key_us": cost.verify_known_key_us,
            "signature_samples": cost.samples,
            "target": self.target().map(|t| json!({ "p50_target_us": t.p50_target_us, "p50_met": t.p50_met, "p99_met": t.p99_met })),
            "ratio_p50": self.latency_ratio(|l| l.p50_us),
            "ratio_p99": self.latency_ratio(|l| l.p99_us),
        })
    }

    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "latency: publisher -> 1 server -> 1 subscriber, {} B payload, {} msgs/s for {:.1} s after a {:.1} s warm-up, flush after every message, signatures {}\n",
            o.payload_length,
            o.rate_per_s,
            o.duration.as_secs_f64(),
            WARMUP.as_secs_f64(),
            o.signatures.name()
        );
        let rows: [TableRow; 7] = [
            ("latency p50 us", |r| r.latency.p50_us, 1),
            ("latency p99 us", |r| r.latency.p99_us, 1),
            ("latency p99.9 us", |r| r.latency.p999_us, 1),
            ("latency max us", |r| r.latency.max_us, 1),
            ("samples", |r| r.latency.samples as f64, 0),
            ("publish msgs/s", |r| r.published_per_s, 0),
            ("delivered fraction", |r| r.delivered_fraction, 4),
        ];
        out += &format!("{:<30}{:>16}{:>16}{:>14}\n", "", "runnel", "nats", "runnel/nats");
        for (name, value, decimals) in rows {
            let nats = self.nats.as_ref().map_or("-".to_string(), |n| format!("{:.*}", decimals, value(n)));
            let ratio = ratio(Some(value(&self.runnel)), self.nats.as_ref().map(value)).map_or("-".to_string(), |x| format!("{x:.2}"));
            out += &format!("{name:<30}{:>16}{nats:>16}{ratio:>14}\n", format!("{:.*}", decimals, value(&self.runnel)));
        }
        let cost = &self.signature_cost;
        out += &format!(
            "signature cost (median of {}): sign {:.1} us, verify (recover + compare) {:.1} us, verify with a known key {:.1} us\n",
            cost.samples, cost.sign_us, cost.verify_us, cost.verify_known_key_us
        );
        if let Some(target) = self.target() {
            let met = |met: bool| if met { "met" } else { "not met" };
            out += &format!(
                "target p50 <= nats p50 + sign + verify = {:.1} us: {}; target p99 <= nats p99: {}\n",
                target.p50_target_us,
                met(target.p50_met),
                met(target.p99_met)
            );
        }
        for (system, result) in [("runnel", Some(&self.runnel)), ("nats", self.nats.as_ref())] {
            for error in result.iter().flat_map(|r| &r.subscriber_errors) {
                out += &format!("{system}: {error}\n");
            }
        }
        out
    }

    /// The table on stdout.
    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the signature timings measure real ECDSA work, which takes well over 1 µs on any
    // CPU (a timed region the optimizer had emptied would read in nanoseconds).
    #[test]
    fn signature_cost_is_measured() {
        let cost = signature_cost(50);
        assert!(cost.sign_us > 1.0 && cost.verify_us > 1.0 && cost.verify_known_key_us > 1.0, "{cost:?}");
        assert!(cost.sign_us.is_finite() && cost.verify_us.is_finite(), "{cost:?}");
    }
}
