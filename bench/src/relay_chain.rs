//! `runnel bench relay-chain`: publisher → node A → node B → node C → subscriber.
//!
//! Three node processes in a line ([`RunnelNodes`] with three nodes), the publisher on A and
//! one subscriber on C, so every message crosses two node-to-node hops. The workload and its
//! phases are the fan-out ones ([`crate::workload`]: unpaced probe, paced search for the highest
//! rate delivered at ≥ 99%, latency at a fixed rate) with one subscriber; CPU% and RSS are
//! summed over the three nodes. In the same run, [`udp_ceiling`] measures the raw batched-UDP
//! forwarder on this machine, and the report gives Runnel's delivered msgs/s as a fraction of
//! the ceiling's messages/s at the same payload size.
//!
//! Limits: all three nodes, the publisher and the subscriber share this machine's cores, so
//! the chain is CPU-bound well before the network is; the ceiling forwarder is one hop, the
//! chain two, which the fraction does not correct for (it is the honest "how close to raw
//! I/O does a real relay get", not a per-hop efficiency).

use crate::fanout::{runnel_binary, steps_line, system_json, SignatureMode};
use crate::runnel::RunnelNodes;
use crate::udp_ceiling::{udp_ceiling, UdpCeilingOptions, UdpCeilingReport};
use crate::workload::{self, Flush, Paced, SystemResult, Workload, LATENCY_FLUSH_INTERVAL, SEARCH_STEPS};
use crate::{BenchError, WorkDir};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Nodes in the chain: A, B, C.
pub const CHAIN_NODES: usize = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct RelayChainOptions {
    pub payload_length: usize,
    /// Time budget of the throughput search (see [`crate::FanoutOptions::duration`]); the
    /// ceiling runs this long too.
    pub duration: Duration,
    pub signatures: SignatureMode,
    pub latency_duration: Duration,
    pub latency_rate_per_s: u64,
    /// The `runnel` binary started as `runnel node --config FILE`; default: this executable.
    pub runnel_binary: Option<PathBuf>,
}

impl Default for RelayChainOptions {
    fn default() -> Self {
        Self {
            payload_length: 64,
            duration: Duration::from_secs(5),
            signatures: SignatureMode::Batch,
            latency_duration: Duration::from_secs(3),
            latency_rate_per_s: 10_000,
            runnel_binary: None,
        }
    }
}

/// Nanoseconds of CPU per item: `cpu_percent` of one core spent on `items_per_s`.
fn cpu_ns_per(cpu_percent: f64, items_per_s: f64) -> f64 {
    if items_per_s > 0.0 {
        cpu_percent / 100.0 * 1e9 / items_per_s
    } else {
        0.0
    }
}

/// Results of one relay-chain run.
#[derive(Clone, Debug)]
pub struct RelayChainReport {
    pub options: RelayChainOptions,
    pub runnel: SystemResult,
    pub ceiling: UdpCeilingReport,
}

impl RelayChainReport {
    /// Runnel's delivered msgs/s over the ceiling's msgs/s at the same payload size.
    pub fn fraction_of_ceiling(&self) -> f64 {
        let ceiling = self.ceiling.messages_per_s_at(self.options.payload_length);
        if ceiling > 0.0 {
            self.runnel.delivered_per_s / ceiling
        } else {
            0.0
        }
    }

    /// Node CPU per datagram a node takes in and forwards, at the found rate: the nodes' CPU
    /// (summed) over the datagrams all of them handled, counting the delivered messages at
    /// v2's full packing ([`crate::messages_per_datagram`]) per node. Datagrams that leave
    /// less than full make this an overestimate of the real per-datagram cost.
    pub fn node_cpu_ns_per_datagram(&self) -> f64 {
        let datagrams_per_s =
            self.runnel.delivered_per_s / crate::messages_per_datagram(self.options.payload_length) as f64 * CHAIN_NODES as f64;
        cpu_ns_per(self.runnel.cpu_percent, datagrams_per_s)
    }

    /// The ceiling forwarder's CPU per datagram it forwarded, measured in the same run.
    pub fn ceiling_cpu_ns_per_datagram(&self) -> f64 {
        cpu_ns_per(self.ceiling.forwarder_cpu_percent, self.ceiling.delivered_datagrams_per_s)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "relay_chain",
            "nodes": CHAIN_NODES,
            "size": self.options.payload_length,
            "duration_s": self.options.duration.as_secs_f64(),
            "step_s": self.options.duration.as_secs_f64() / (1 + SEARCH_STEPS) as f64,
            "signatures": self.options.signatures.name(),
            "runnel": system_json(&self.runnel),
            "ceiling": self.ceiling.to_json(),
            "ceiling_messages_per_s": self.ceiling.messages_per_s_at(self.options.payload_length),
            "fraction_of_ceiling": self.fraction_of_ceiling(),
            "node_cpu_ns_per_datagram": self.node_cpu_ns_per_datagram(),
            "ceiling_cpu_ns_per_datagram": self.ceiling_cpu_ns_per_datagram(),
        })
    }

    pub fn table(&self) -> String {
        let o = &self.options;
        let r = &self.runnel;
        let mut out = format!(
            "relay chain: publisher -> A -> B -> C -> subscriber, {} B payload, throughput search in {:.1} s (steps of {:.2} s), signatures {}\n",
            o.payload_length,
            o.duration.as_secs_f64(),
            o.duration.as_secs_f64() / (1 + SEARCH_STEPS) as f64,
            o.signatures.name()
        );
        let rows = [
            ("delivered msgs/s", format!("{:.0}", r.delivered_per_s)),
            ("publish msgs/s (found rate)", format!("{:.0}", r.published_per_s)),
            ("delivered fraction", format!("{:.4}", r.delivered_fraction)),
            ("unpaced publish msgs/s", format!("{:.0}", r.probe.published_per_s)),
            ("unpaced delivered msgs/s", format!("{:.0}", r.probe.delivered_per_s)),
            ("unpaced delivered fraction", format!("{:.4}", r.probe.delivered_fraction)),
            ("latency p50 us (2 hops)", format!("{:.1}", r.latency.p50_us)),
            ("latency p99 us (2 hops)", format!("{:.1}", r.latency.p99_us)),
            ("nodes CPU % (sum, found rate)", format!("{:.1}", r.cpu_percent)),
            ("node CPU ns per datagram", format!("{:.0}", self.node_cpu_ns_per_datagram())),
            ("ceiling CPU ns per datagram", format!("{:.0}", self.ceiling_cpu_ns_per_datagram())),
            ("nodes RSS MiB (sum, found)", format!("{:.1}", r.rss_kib as f64 / 1024.0)),
            ("UDP ceiling msgs/s", format!("{:.0}", self.ceiling.messages_per_s_at(o.payload_length))),
            ("fraction of ceiling", format!("{:.3}", self.fraction_of_ceiling())),
        ];
        for (name, value) in rows {
            out += &format!("{name:<30}{value:>16}\n");
        }
        out += &format!("{}\n", steps_line(r));
        for error in &r.subscriber_errors {
            out += &format!("runnel: {error}\n");
        }
        out
    }

    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

/// Runs the chain, then the UDP ceiling for comparison.
pub fn relay_chain(options: RelayChainOptions) -> Result<RelayChainReport, BenchError> {
    let workload = Workload {
        subscribers: 1,
        payload_length: options.payload_length,
        duration: options.duration,
        latency: Paced {
            rate_per_s: options.latency_rate_per_s,
            duration: options.latency_duration,
            flush: Flush::Interval(LATENCY_FLUSH_INTERVAL),
        },
        batch_messages: crate::GSO_SEGMENTS_MAX * crate::messages_per_datagram(options.payload_length),
        samples_max: 100_000,
    };
    let binary = runnel_binary(options.runnel_binary.as_deref())?;
    let runnel = {
        let work_dir = WorkDir::create("relay-chain")?;
        let mut nodes = RunnelNodes::start(&binary, CHAIN_NODES, 1, options.signatures, &work_dir.0)?;
        workload::measure(&mut nodes, &workload)?
    };
    let ceiling = udp_ceiling(UdpCeilingOptions { duration: options.duration, payload_lengths: vec![options.payload_length] })?;
    Ok(RelayChainReport { options, runnel, ceiling })
}
