//! `runnel bench xdp`: what the XDP early-rejection filter costs per dropped datagram, and
//! whether legitimate traffic still gets through while forged datagrams flood the node.
//!
//! Two parts, both on the real program (`ebpf/src/runnel_filter.c`, loaded by
//! [`runnel_ebpf::XdpFilter`]):
//!
//! 1. **Per-verdict cost** ([`verdict_costs`]): the program is loaded (not attached) and run
//!    through `BPF_PROG_TEST_RUN` on one crafted frame per verdict; the kernel reports the mean
//!    time per run. Verdicts decided before or by the replay window (`not_runnel`, `malformed`,
//!    `unknown_link`, `bad_tag`, `quarantined_link`, `quarantined_publisher`, `replayed`) leave
//!    no state behind, so one frame runs `repeat` (≥ 1,000,000) times in one call
//!    ([`CostMethod::Repeated`]). Verdicts decided after it (`not_joined`, `not_permitted`,
//!    `rate_limited`, `pass`) cannot be repeated: the replay window records the first run's
//!    sequence, so runs 2..n of the same frame are `replayed`. Those are measured with a fresh
//!    link sequence per run, one run per call ([`CostMethod::FreshSequences`]), and corrected
//!    for what a one-run call adds (the kernel's timer read, a cold cache): the `replayed`
//!    frame is measured both ways and the difference is subtracted. Every measurement checks
//!    from the verdict counters that the runs got the intended verdict ([`VerdictCost::verdict_share`]).
//!    `drop_per_s_per_core` = 1e9 / mean ns of the forged-datagram verdicts
//!    ([`FORGED_DROP_VERDICTS`]).
//! 2. **Veth attack scenario** ([`VethScenario`]): two network namespaces joined by a veth pair
//!    ([`VethPair`], `10.77.x.1` ↔ `10.77.x.2`). A node runs in this process inside the
//!    receiving namespace (a thread enters it with `setns`, then calls [`Node::start`]; the
//!    shard and policy threads it spawns inherit it) with the filter attached natively to
//!    `veth-b` ([`FilterChoice::XdpNative`]) or off ([`FilterChoice::Off`]: the same checks in
//!    userspace). In the sending namespace, a paced legitimate publisher and a subscriber
//!    (the dataplane's [`UdpClient`]) exchange messages while flood threads send forged
//!    datagrams with UDP GSO (64 datagrams of 88 bytes per `sendmsg`), round-robin over the
//!    four [`ForgedKind`]s: bad tags on the publisher's real link, replays of one valid datagram
//!    of an attacker's client link (the flood holds that link's key), unknown link ids, and
//!    correctly tagged single-publisher datagrams naming a publisher the node quarantined with
//!    [`NodeHandle::update_filter`]. Every forged datagram the kernel accepted is counted per
//!    kind ([`FloodOutcome::sent`]).
//!
//! [`xdp()`] runs part 1, then four phases of the scenario (no flood and flood, with the filter
//! on and off) and reports delivered msgs/s, `legit_ratio_under_flood`, and the node's CPU per
//! delivered message: utime + stime of its `runnel-shard*` threads (`/proc/self/task/*/stat`),
//! plus the machine's softirq time (`/proc/stat`), where XDP on veth runs.
//!
//! # Two modes, one path
//! The pair has one queue each way (as a single-queue NIC): with veth's default of one queue
//! per CPU, a flow's packets were at times judged on two CPUs at once under backpressure and a
//! few fresh datagrams came out `replayed`, which the per-kind accounting cannot allow.
//!
//! Native XDP on `veth-b` makes veth turn off segmentation offload on `veth-a` (every
//! datagram is then a packet of its own) and receive with NAPI. Without XDP, veth would carry
//! a 64-datagram GSO send to the node's socket as one buffer, 64 times cheaper for the kernel
//! than packets from a NIC and no fair comparison. So the pair is set up the same way for both
//! modes: `veth-a` segments in software (`tso`, `tx-udp-segmentation`, `tx-gso-list` off) and
//! `veth-b` receives with NAPI and GRO (`gro on`), as a NIC and its driver would.
//!
//! The flood threads stand in for the attacker's machine: they are pinned to the CPUs other
//! than the one that holds the node's shard (when there are two or more). On veth the receive
//! path, XDP included, runs in the softirq of the sending CPU, so the drops are paid there and
//! the scenario measures what reaches the node's core; what a core pays per drop is part 1.
//!
//! # Accounting
//! The sending veth gets a `pfifo` qdisc and the flood sockets `IP_RECVERR`: when veth's ring
//! toward the XDP side is full, the kernel holds packets in the qdisc instead of dropping them,
//! and a full qdisc fails the whole `sendmsg` with `ENOBUFS`, which is then not counted as
//! sent. Interface drop counters of both ends are reported ([`VethDrops`]) so that a count is
//! only trusted when they are zero.
//!
//! # Cleanup
//! Namespaces are named `runnel-xdp-<pid>-<n>-tx|rx` and deleted when their [`Netns`] guard
//! drops (deleting a namespace deletes its veth end and with it the pair). The release
//! profile aborts on panic, which skips `Drop`, so a panic hook also deletes every live one;
//! namespaces left by a killed process (its pid no longer running) are deleted when the next
//! scenario starts. `ip netns list | grep runnel-xdp` shows any.
//!
//! # Limits
//! Needs root (BPF, namespaces), `ip` and `tc` (iproute2) and `ethtool`. Everything shares
//! this machine's cores: the clients float over all of them, and the flood's CPUs run the
//! receive path of every packet. Native XDP on veth copies a packet that arrives as an skb
//! without XDP's 256 bytes of headroom (every locally sent one) into a page of its own before
//! the program runs, a cost a NIC driver does not have, so the
//! flood rate one thread reaches here says little about a NIC. `test_run` times the program
//! alone, without a driver's receive path: a NIC's real drop rate per core is lower.

use crate::measure::{precise_sleeps, Pacer};
use crate::process::find_executable;
use crate::udp_ceiling::send_gso;
use crate::BenchError;
use runnel_client::{unix_time_ms, ClientLinkConfig, ClientOptions, Outgoing, SigningMode, UdpClient};
use runnel_core::counters::{Counter, Counters};
use runnel_core::filter::FilterUpdate;
use runnel_ebpf::{packet, LinkEntry, Verdict, XdpFilter, ROLE_CLIENT, ROLE_NEIGHBOR, VERDICT_COUNT};
use runnel_node::config::NodeConfig;
use runnel_node::node::{FilterMode, Node, NodeHandle};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{write_header, HeaderFields, Kind, DATAGRAM_LENGTH_DEFAULT, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod cost;
mod flood;
mod netns;
mod scenario;

pub use cost::*;
pub use flood::*;
pub use netns::*;
pub use scenario::*;

// ---- Options ------------------------------------------------------------------------------

/// How fast the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodRate {
    /// Forged datagrams per second, all flood threads together.
    PerSecond(u64),
    /// As fast as the flood threads can.
    Max,
}

impl FloodRate {
    /// `max` or a number of datagrams per second (> 0).
    pub fn parse(text: &str) -> Result<FloodRate, BenchError> {
        if text == "max" {
            return Ok(FloodRate::Max);
        }
        match text.parse::<u64>() {
            Ok(rate) if rate > 0 => Ok(FloodRate::PerSecond(rate)),
            _ => Err(BenchError::new(format!("{text:?}: a number of datagrams per second (> 0) or `max`"))),
        }
    }

    fn to_json(self) -> Value {
        match self {
            FloodRate::PerSecond(rate) => json!(rate),
            FloodRate::Max => json!("max"),
        }
    }
}

impl std::fmt::Display for FloodRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloodRate::PerSecond(rate) => write!(f, "{rate} datagrams/s"),
            FloodRate::Max => f.write_str("max"),
        }
    }
}

/// What `runnel bench xdp` runs.
#[derive(Clone, Debug)]
pub struct XdpOptions {
    /// Length of each veth phase (the legitimate publisher's sending time).
    pub duration: Duration,
    /// The flood's rate in the flood phases.
    pub flood_rate: FloodRate,
    /// Flood threads (each with its own socket).
    pub flood_threads: usize,
    /// The legitimate publisher's paced rate, messages/s.
    pub legit_rate_per_s: u64,
    /// Runs per `test_run` call for the stateless verdicts (≥ 1,000,000 for the report's
    /// figures).
    pub repeat: u32,
    /// One-run calls (each with a fresh link sequence) per stateful verdict.
    pub fresh_runs: u32,
    /// Legitimate message payload, bytes (≥ 9: phase tag and sequence).
    pub payload_length: usize,
}

impl Default for XdpOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(5),
            flood_rate: FloodRate::PerSecond(FLOOD_RATE_DEFAULT),
            flood_threads: 1,
            legit_rate_per_s: LEGIT_RATE_DEFAULT,
            repeat: 1_000_000,
            fresh_runs: 100_000,
            payload_length: 64,
        }
    }
}

/// Default flood rate: one flood thread reaches it through veth with the filter on and off
/// alike on this machine class (with native XDP on veth, one sending CPU tops out at
/// 0.7–0.8M datagrams/s; see bench/README.md), so both modes see the same offered load.
pub const FLOOD_RATE_DEFAULT: u64 = 500_000;
/// Default legitimate rate.
pub const LEGIT_RATE_DEFAULT: u64 = 20_000;
/// The report's targets (reported, not asserted).
pub const DROP_PER_S_PER_CORE_TARGET: f64 = 5e6;
pub const LEGIT_RATIO_TARGET: f64 = 0.9;

// ---- The benchmark -------------------------------------------------------------------------

/// Everything `runnel bench xdp` measured.
#[derive(Clone, Debug)]
pub struct XdpReport {
    pub options: XdpOptions,
    pub costs: VerdictCosts,
    pub no_flood_xdp: PhaseOutcome,
    pub flood_xdp: PhaseOutcome,
    pub no_flood_userspace: PhaseOutcome,
    pub flood_userspace: PhaseOutcome,
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

impl XdpReport {
    /// Delivered msgs/s under the flood with the filter on ÷ without the flood.
    pub fn legit_ratio_under_flood(&self) -> f64 {
        ratio(self.flood_xdp.delivered_per_s(), self.no_flood_xdp.delivered_per_s())
    }

    /// The same with the filter off (userspace checks).
    pub fn legit_ratio_under_flood_userspace(&self) -> f64 {
        ratio(self.flood_userspace.delivered_per_s(), self.no_flood_userspace.delivered_per_s())
    }

    pub fn to_json(&self) -> Value {
        let verdict_ns: serde_json::Map<String, Value> =
            self.costs.costs.iter().map(|c| (c.verdict.name().to_string(), json!(c.ns_per_packet))).collect();
        let costs: Vec<Value> = self
            .costs
            .costs
            .iter()
            .map(|c| {
                json!({
                    "verdict": c.verdict.name(),
                    "ns_per_packet": c.ns_per_packet,
                    "raw_ns_per_packet": c.raw_ns_per_packet,
                    "method": c.method.name(),
                    "runs": c.runs,
                    "verdict_share": c.verdict_share,
                })
            })
            .collect();
        let o = &self.options;
        json!({
            "scenario": "xdp",
            "duration_s": o.duration.as_secs_f64(),
            "legit_rate_per_s": o.legit_rate_per_s,
            "flood_rate_per_s": o.flood_rate.to_json(),
            "flood_threads": o.flood_threads,
            "repeat": o.repeat,
            "fresh_runs": o.fresh_runs,
            "payload_length": o.payload_length,
            "verdict_ns": verdict_ns,
            "verdict_costs": costs,
            "one_run_overhead_ns": self.costs.one_run_overhead_ns,
            "drop_verdicts": FORGED_DROP_VERDICTS.iter().map(|v| v.name()).collect::<Vec<_>>(),
            "drop_ns_mean": self.costs.drop_ns_mean(),
            "drop_per_s_per_core": self.costs.drop_per_s_per_core(),
            "legit_ratio_under_flood": self.legit_ratio_under_flood(),
            "legit_ratio_under_flood_userspace": self.legit_ratio_under_flood_userspace(),
            "delivered_per_s": {
                "no_flood_xdp": self.no_flood_xdp.delivered_per_s(),
                "flood_xdp": self.flood_xdp.delivered_per_s(),
                "no_flood_userspace": self.no_flood_userspace.delivered_per_s(),
                "flood_userspace": self.flood_userspace.delivered_per_s(),
            },
            "phases": {
                "no_flood_xdp": self.no_flood_xdp.to_json(),
                "flood_xdp": self.flood_xdp.to_json(),
                "no_flood_userspace": self.no_flood_userspace.to_json(),
                "flood_userspace": self.flood_userspace.to_json(),
            },
            "targets": {
                "drop_per_s_per_core_min": DROP_PER_S_PER_CORE_TARGET,
                "legit_ratio_under_flood_min": LEGIT_RATIO_TARGET,
                "drop_per_s_per_core_met": self.costs.drop_per_s_per_core() >= DROP_PER_S_PER_CORE_TARGET,
                "legit_ratio_under_flood_met": self.legit_ratio_under_flood() >= LEGIT_RATIO_TARGET,
            },
        })
    }

    pub fn table(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "xdp filter: per-verdict cost by BPF_PROG_TEST_RUN (repeat {}, fresh-sequence runs {}; \
             one-run overhead {:.1} ns subtracted from those)\n",
            o.repeat, o.fresh_runs, self.costs.one_run_overhead_ns
        );
        out += &format!("{:<24}{:>10}{:>10}{:>18}{:>10}\n", "verdict", "ns/pkt", "raw ns", "method", "share");
        for c in &self.costs.costs {
            out += &format!(
                "{:<24}{:>10.1}{:>10.1}{:>18}{:>10.4}\n",
                c.verdict.name(),
                c.ns_per_packet,
                c.raw_ns_per_packet,
                c.method.name(),
                c.verdict_share
            );
        }
        out += &format!(
            "forged-drop mean {:.1} ns -> {:.2}M drops/s/core (target >= {:.0}M)\n\n",
            self.costs.drop_ns_mean(),
            self.costs.drop_per_s_per_core() / 1e6,
            DROP_PER_S_PER_CORE_TARGET / 1e6
        );
        out += &format!(
            "veth scenario: legit {} msgs/s for {:.1} s per phase, flood {} ({} thread(s)), node with 1 shard on {}\n",
            o.legit_rate_per_s,
            o.duration.as_secs_f64(),
            o.flood_rate,
            o.flood_threads,
            RECEIVER_INTERFACE
        );
        out += &format!(
            "{:<22}{:>12}{:>12}{:>10}{:>13}{:>10}{:>12}{:>10}{:>12}\n",
            "phase", "delivered/s", "forged/s", "fraction", "shard us/msg", "shard %", "sirq us/msg", "sirq %", "lost sends"
        );
        for phase in [&self.no_flood_xdp, &self.flood_xdp, &self.no_flood_userspace, &self.flood_userspace] {
            out += &format!(
                "{:<22}{:>12.0}{:>12.0}{:>10.4}{:>13.2}{:>10.1}{:>12.2}{:>10.1}{:>12}\n",
                phase.name,
                phase.delivered_per_s(),
                phase.flood.map_or(0.0, |f| f.sent_per_s()),
                phase.delivered() as f64 / phase.published.max(1) as f64,
                phase.shard_cpu_us_per_message(),
                phase.shard_cpu_percent(),
                phase.softirq_us_per_message(),
                phase.softirq_percent(),
                phase.client_sends_lost()
            );
        }
        out += &format!(
            "legit_ratio_under_flood {:.3} (target >= {LEGIT_RATIO_TARGET}); with the filter off {:.3}\n",
            self.legit_ratio_under_flood(),
            self.legit_ratio_under_flood_userspace()
        );
        for phase in [&self.flood_xdp, &self.flood_userspace] {
            out += &format!("{}\n", phase.diagnostics());
        }
        out
    }

    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

/// Whether this process runs as root (BPF and namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `runnel bench xdp` (module doc): per-verdict costs, then four veth phases.
pub fn xdp(options: XdpOptions) -> Result<XdpReport, BenchError> {
    if !is_root() {
        return Err(BenchError::new("runnel bench xdp needs root: it loads BPF programs and creates network namespaces"));
    }
    if options.payload_length < 9 {
        return Err(BenchError::new("payload length must be at least 9 bytes (phase tag and sequence)"));
    }
    if options.legit_rate_per_s == 0 {
        return Err(BenchError::new("--legit-rate must be above 0"));
    }
    let costs = verdict_costs(options.repeat, options.fresh_runs)?;
    let legit = LegitPlan {
        messages: ((options.legit_rate_per_s as f64 * options.duration.as_secs_f64()) as u64).max(1),
        rate_per_s: options.legit_rate_per_s,
        payload_length: options.payload_length,
    };
    let flood = FloodPlan { rate: options.flood_rate, per_kind: None, threads: options.flood_threads.max(1) };
    let phase = |name: &str, flood: Option<FloodPlan>| PhasePlan { name: name.into(), legit, flood };
    let mut scenario = VethScenario::create()?;
    scenario.start_node(FilterChoice::XdpNative)?;
    let no_flood_xdp = scenario.run_phase(&phase("no_flood_xdp", None))?;
    let flood_xdp = scenario.run_phase(&phase("flood_xdp", Some(flood)))?;
    scenario.start_node(FilterChoice::Off)?;
    let no_flood_userspace = scenario.run_phase(&phase("no_flood_userspace", None))?;
    let flood_userspace = scenario.run_phase(&phase("flood_userspace", Some(flood)))?;
    scenario.stop_node()?;
    Ok(XdpReport { options, costs, no_flood_xdp, flood_xdp, no_flood_userspace, flood_userspace })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: --flood-rate takes a positive number or `max`, nothing else.
    #[test]
    fn flood_rate_parses() {
        assert_eq!(FloodRate::parse("max").unwrap(), FloodRate::Max);
        assert_eq!(FloodRate::parse("250000").unwrap(), FloodRate::PerSecond(250_000));
        assert!(FloodRate::parse("0").is_err());
        assert!(FloodRate::parse("fast").is_err());
    }
}
