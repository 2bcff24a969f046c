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
use runnel_dataplane::client::{unix_time_ms, ClientLinkConfig, ClientOptions, Outgoing, SigningMode, UdpClient};
use runnel_dataplane::config::NodeConfig;
use runnel_dataplane::counters::{Counter, Counters};
use runnel_dataplane::crypto::PublisherKey;
use runnel_dataplane::filter::FilterUpdate;
use runnel_dataplane::linktag::LinkKey;
use runnel_dataplane::node::{FilterMode, Node, NodeHandle};
use runnel_dataplane::stream::{StreamPart, StreamPartKey};
use runnel_dataplane::wire::{write_header, HeaderFields, Kind, DATAGRAM_LENGTH_DEFAULT, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH};
use runnel_ebpf::{packet, LinkEntry, Verdict, XdpFilter, ROLE_CLIENT, ROLE_NEIGHBOR, VERDICT_COUNT};
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
            _ => Err(BenchError::new(format!("--flood-rate {text:?}: a number of datagrams per second (> 0) or `max`"))),
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

// ---- Part 1: per-verdict cost through BPF_PROG_TEST_RUN ---------------------------------------

/// The verdicts a forged datagram gets; their mean cost gives `drop_per_s_per_core`.
pub const FORGED_DROP_VERDICTS: [Verdict; 5] =
    [Verdict::BadTag, Verdict::UnknownLink, Verdict::Replayed, Verdict::QuarantinedPublisher, Verdict::Malformed];

/// How a verdict's cost was measured (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostMethod {
    /// One frame, `repeat` runs in one call: the kernel's mean per run.
    Repeated,
    /// One run per call, a fresh link sequence each, minus the one-run overhead.
    FreshSequences,
}

impl CostMethod {
    pub fn name(self) -> &'static str {
        match self {
            CostMethod::Repeated => "repeated",
            CostMethod::FreshSequences => "fresh_sequences",
        }
    }
}

/// The program's cost for one verdict.
#[derive(Clone, Debug)]
pub struct VerdictCost {
    pub verdict: Verdict,
    pub method: CostMethod,
    /// Program runs measured.
    pub runs: u64,
    /// Mean ns per packet (for [`CostMethod::FreshSequences`], after the correction).
    pub ns_per_packet: f64,
    /// Mean ns per packet as the kernel reported it, before any correction.
    pub raw_ns_per_packet: f64,
    /// Share of the runs that got `verdict` (from the verdict counters): 1.0 when the
    /// crafted frame does what it should.
    pub verdict_share: f64,
}

/// All verdict costs and what they add up to.
#[derive(Clone, Debug)]
pub struct VerdictCosts {
    pub costs: Vec<VerdictCost>,
    /// ns a one-run call adds over a run inside a long repeat (subtracted from fresh runs).
    pub one_run_overhead_ns: f64,
}

impl VerdictCosts {
    pub fn get(&self, verdict: Verdict) -> Option<&VerdictCost> {
        self.costs.iter().find(|cost| cost.verdict == verdict)
    }

    /// Mean ns over [`FORGED_DROP_VERDICTS`].
    pub fn drop_ns_mean(&self) -> f64 {
        let costs: Vec<f64> = FORGED_DROP_VERDICTS.iter().filter_map(|v| self.get(*v)).map(|c| c.ns_per_packet).collect();
        costs.iter().sum::<f64>() / costs.len().max(1) as f64
    }

    /// 1e9 / [`VerdictCosts::drop_ns_mean`]: forged datagrams one core can drop per second,
    /// counting the program alone.
    pub fn drop_per_s_per_core(&self) -> f64 {
        let mean = self.drop_ns_mean();
        if mean > 0.0 {
            1e9 / mean
        } else {
            0.0
        }
    }
}

const TEST_PORT: u16 = 7000;
const TEST_NEIGHBOR: u32 = 1;
const TEST_CLIENT: u32 = 2;
const TEST_QUARANTINED_LINK: u32 = 3;
const TEST_RATE_LIMITED_LINK: u32 = 4;
const TEST_UNKNOWN_LINK: u32 = 99;
const TEST_JOINED: [u8; 32] = [1; 32];
const TEST_RESTRICTED: [u8; 32] = [2; 32];
const TEST_NOT_JOINED: [u8; 32] = [3; 32];
const TEST_PUBLISHER: [u8; 20] = [0xa1; 20];
const TEST_QUARANTINED_PUBLISHER: [u8; 20] = [0xa3; 20];
const TEST_STRANGER: [u8; 20] = [0xa4; 20];

fn test_key(link_id: u32) -> LinkKey {
    LinkKey([0x40 + link_id as u8; 32])
}

/// An Ethernet frame carrying one 88-byte datagram from 10.0.0.1:`source_port` to the test port.
fn test_frame(fields: HeaderFields, key: &LinkKey, source_port: u16, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut datagram = [0u8; HEADER_LENGTH];
    write_header(&fields, key, &mut datagram);
    edit(&mut datagram);
    packet::udp_ipv4(
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), source_port),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), TEST_PORT),
        &datagram,
    )
}

fn test_fields(kind: Kind, link_id: u32, link_seq: u64, part: [u8; 32], publisher: Option<[u8; 20]>) -> HeaderFields {
    HeaderFields {
        kind,
        link_id,
        link_seq,
        stream_part_key: part,
        flags: if publisher.is_some() { FLAG_SINGLE_PUBLISHER } else { 0 },
        message_count: 0,
        total_length: HEADER_LENGTH as u16,
        publisher: publisher.unwrap_or([0; 20]),
    }
}

fn xdp_error(what: &str) -> impl Fn(runnel_ebpf::XdpError) -> BenchError + '_ {
    move |error| BenchError::new(format!("{what}: {error}"))
}

/// Loads the program with a policy in which every verdict is reachable.
fn load_test_filter() -> Result<XdpFilter, BenchError> {
    let mut filter = XdpFilter::load().map_err(xdp_error("loading the XDP program (needs root)"))?;
    let setup = (|| {
        filter.add_port(TEST_PORT)?;
        filter.set_link(TEST_NEIGHBOR, &LinkEntry::new(test_key(TEST_NEIGHBOR).0, ROLE_NEIGHBOR, 0, 1))?;
        filter.set_link(TEST_CLIENT, &LinkEntry::new(test_key(TEST_CLIENT).0, ROLE_CLIENT, 0, 1))?;
        filter.set_link(TEST_QUARANTINED_LINK, &LinkEntry::new(test_key(TEST_QUARANTINED_LINK).0, ROLE_CLIENT, 0, 1))?;
        // One datagram per 1000 s, no burst: after the first, every datagram is over the rate
        // for as long as the measurement can take.
        let slow = LinkEntry {
            key: test_key(TEST_RATE_LIMITED_LINK).0,
            role: ROLE_CLIENT,
            emission_interval_ns: 1_000_000_000_000,
            burst_tolerance_ns: 0,
        };
        filter.set_link(TEST_RATE_LIMITED_LINK, &slow)?;
        filter.quarantine_link(TEST_QUARANTINED_LINK, u64::MAX)?;
        filter.quarantine_publisher(TEST_QUARANTINED_PUBLISHER, u64::MAX)?;
        filter.join(TEST_JOINED)?;
        filter.join(TEST_RESTRICTED)?;
        filter.set_restricted(TEST_RESTRICTED, true)?;
        filter.permit(TEST_RESTRICTED, TEST_PUBLISHER, u64::MAX)?;
        Ok::<(), runnel_ebpf::XdpError>(())
    })();
    setup.map_err(xdp_error("filling the XDP maps"))?;
    Ok(filter)
}

fn counts(filter: &XdpFilter) -> Result<[u64; VERDICT_COUNT], BenchError> {
    filter.verdict_counts().map_err(xdp_error("reading the verdict counters"))
}

/// Runs `frame` `repeat` times in one call; returns (kernel ns per run, share with `verdict`).
fn measure_repeated(filter: &XdpFilter, frame: &[u8], repeat: u32, verdict: Verdict) -> Result<(f64, f64), BenchError> {
    let before = counts(filter)?;
    let outcome = filter.test_run(frame, repeat).map_err(xdp_error("BPF_PROG_TEST_RUN"))?;
    let after = counts(filter)?;
    let share = (after[verdict as usize] - before[verdict as usize]) as f64 / repeat.max(1) as f64;
    Ok((outcome.duration_ns_per_run, share))
}

/// `runs` one-run calls on `frame_for(i)`; returns (mean kernel ns per call, share with `verdict`).
fn measure_one_run_calls(
    filter: &XdpFilter,
    runs: u32,
    verdict: Verdict,
    mut frame_for: impl FnMut(u64) -> Vec<u8>,
) -> Result<(f64, f64), BenchError> {
    let frames: Vec<Vec<u8>> = (0..runs as u64).map(&mut frame_for).collect();
    let before = counts(filter)?;
    let mut total_ns = 0.0;
    for frame in &frames {
        total_ns += filter.test_run(frame, 1).map_err(xdp_error("BPF_PROG_TEST_RUN"))?.duration_ns_per_run;
    }
    let after = counts(filter)?;
    let runs = runs.max(1) as f64;
    Ok((total_ns / runs, (after[verdict as usize] - before[verdict as usize]) as f64 / runs))
}

/// Part 1 (module doc): the program's cost per verdict on crafted frames. Needs root; does
/// not attach to any interface.
pub fn verdict_costs(repeat: u32, fresh_runs: u32) -> Result<VerdictCosts, BenchError> {
    let filter = load_test_filter()?;
    let repeat = repeat.max(1);
    let fresh_runs = fresh_runs.max(1);
    let client = test_key(TEST_CLIENT);
    let mut costs = Vec::new();
    let mut repeated = |verdict: Verdict, frame: Vec<u8>| -> Result<(), BenchError> {
        let (ns, share) = measure_repeated(&filter, &frame, repeat, verdict)?;
        costs.push(VerdictCost {
            verdict,
            method: CostMethod::Repeated,
            runs: repeat as u64,
            ns_per_packet: ns,
            raw_ns_per_packet: ns,
            verdict_share: share,
        });
        Ok(())
    };
    let data = |link_id: u32, seq: u64| test_fields(Kind::Data, link_id, seq, TEST_JOINED, None);
    // Not one of the node's ports.
    let mut other_port = test_frame(data(TEST_CLIENT, 1), &client, 4000, |_| {});
    let udp_destination = 14 + 20 + 2;
    other_port[udp_destination..udp_destination + 2].copy_from_slice(&9u16.to_be_bytes());
    // The UDP checksum is now wrong; the program does not read it.
    repeated(Verdict::NotRunnel, other_port)?;
    // The last header check: total_length disagrees with the UDP payload (the worst case of
    // `malformed`: every earlier field check passes first).
    repeated(Verdict::Malformed, test_frame(data(TEST_CLIENT, 1), &client, 4000, |d| d[52] ^= 1))?;
    repeated(Verdict::UnknownLink, test_frame(data(TEST_UNKNOWN_LINK, 1), &test_key(TEST_UNKNOWN_LINK), 4000, |_| {}))?;
    repeated(Verdict::BadTag, test_frame(data(TEST_CLIENT, 1), &client, 4000, |d| d[80] ^= 1))?;
    repeated(Verdict::QuarantinedLink, test_frame(data(TEST_QUARANTINED_LINK, 1), &test_key(TEST_QUARANTINED_LINK), 4000, |_| {}))?;
    // Decided before the replay window, so one frame repeats as the same verdict.
    let quarantined_publisher = test_fields(Kind::Data, TEST_CLIENT, 1, TEST_JOINED, Some(TEST_QUARANTINED_PUBLISHER));
    repeated(Verdict::QuarantinedPublisher, test_frame(quarantined_publisher, &client, 4002, |_| {}))?;
    // A valid datagram, accepted once, then replayed.
    let replay = test_frame(data(TEST_CLIENT, 1), &client, 4001, |_| {});
    filter.test_run(&replay, 1).map_err(xdp_error("BPF_PROG_TEST_RUN"))?;
    repeated(Verdict::Replayed, replay.clone())?;

    // The one-run overhead, on the same frame: one-run calls minus the repeated figure.
    let (replayed_one_run_ns, _) = measure_one_run_calls(&filter, fresh_runs, Verdict::Replayed, |_| replay.clone())?;
    let replayed_repeated_ns = costs.iter().find(|c| c.verdict == Verdict::Replayed).map_or(0.0, |c| c.ns_per_packet);
    let one_run_overhead_ns = (replayed_one_run_ns - replayed_repeated_ns).max(0.0);

    // Fresh link sequences (2, 3, ...) of Data datagrams, from a source port of their own per
    // verdict: (verdict, link, source port, stream part, single publisher).
    let stateful = [
        (Verdict::NotJoined, TEST_NEIGHBOR, 4003, TEST_NOT_JOINED, None),
        (Verdict::NotPermitted, TEST_CLIENT, 4004, TEST_RESTRICTED, Some(TEST_STRANGER)),
        (Verdict::RateLimited, TEST_RATE_LIMITED_LINK, 4005, TEST_JOINED, None),
        (Verdict::Pass, TEST_CLIENT, 4006, TEST_JOINED, Some(TEST_PUBLISHER)),
    ];
    for (verdict, link_id, port, part, publisher) in stateful {
        let key = test_key(link_id);
        let frame = |seq: u64| test_frame(test_fields(Kind::Data, link_id, seq, part, publisher), &key, port, |_| {});
        if verdict == Verdict::RateLimited {
            // The first datagram uses up the link's burst of one.
            filter.test_run(&frame(1), 1).map_err(xdp_error("BPF_PROG_TEST_RUN"))?;
        }
        let (raw, share) = measure_one_run_calls(&filter, fresh_runs, verdict, |i| frame(i + 2))?;
        costs.push(VerdictCost {
            verdict,
            method: CostMethod::FreshSequences,
            runs: fresh_runs as u64,
            ns_per_packet: (raw - one_run_overhead_ns).max(0.0),
            raw_ns_per_packet: raw,
            verdict_share: share,
        });
    }
    costs.sort_by_key(|cost| cost.verdict as u32);
    Ok(VerdictCosts { costs, one_run_overhead_ns })
}

// ---- Network namespaces and the veth pair -------------------------------------------------------

/// Prefix of every namespace this module creates: `runnel-xdp-<pid>-<n>-tx|rx`.
pub const NETNS_PREFIX: &str = "runnel-xdp-";
/// The sending end of the pair (in the sender namespace).
pub const SENDER_INTERFACE: &str = "veth-a";
/// The receiving end, where the node listens and the filter attaches.
pub const RECEIVER_INTERFACE: &str = "veth-b";
/// Packets the sending veth's qdisc holds while the receiving side is busy.
const SENDER_QDISC_PACKETS: u32 = 4096;

/// Names of namespaces created and not yet deleted, for the panic hook.
static LIVE_NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT_PAIR: AtomicUsize = AtomicUsize::new(0);

/// Runs `tool` (iproute2's `ip` and `tc`, `ethtool`) and returns its standard output.
fn tool_output(tool: &str, args: &[&str]) -> Result<Vec<u8>, BenchError> {
    let package = if tool == "ethtool" { "ethtool" } else { "iproute2" };
    let path = find_executable(tool, None).map_err(|_| BenchError::new(format!("`{tool}` not found: apt-get install -y {package}")))?;
    let output = std::process::Command::new(&path)
        .args(args)
        .output()
        .map_err(|e| BenchError::new(format!("cannot run {}: {e}", path.display())))?;
    if !output.status.success() {
        return Err(BenchError::new(format!(
            "`{tool} {}` failed ({}): {} (needs root)",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), BenchError> {
    tool_output(tool, args).map(|_| ())
}

/// Deletes every namespace this process created and has not deleted yet. Called by the
/// panic hook; tests may call it from a watchdog before exiting.
pub fn remove_live_namespaces() {
    // try_lock: the panicking thread may hold the lock.
    let names = match LIVE_NAMESPACES.try_lock() {
        Ok(mut names) => std::mem::take(&mut *names),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => std::mem::take(&mut *poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for name in names {
        let _ = run_tool("ip", &["netns", "del", &name]);
    }
}

/// With `panic = "abort"` (the release profile) no `Drop` runs on a panic; delete the
/// namespaces from the panic hook instead. With unwinding, the guards' `Drop` does it.
fn install_abort_cleanup() {
    #[cfg(panic = "abort")]
    {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                remove_live_namespaces();
            }));
        });
    }
}

/// Deletes namespaces with our prefix whose creating process is gone (killed before its
/// guards dropped).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_tool("ip", &["netns", "del", &name]);
        }
    }
}

/// Moves the calling thread into the namespace behind `file`.
fn enter_namespace(file: &File, name: &str) -> Result<(), BenchError> {
    // SAFETY: setns on a namespace fd we own; it changes only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(BenchError::new(format!("cannot enter network namespace {name}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// A named network namespace (`ip netns add`), deleted when dropped.
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, BenchError> {
        install_abort_cleanup();
        run_tool("ip", &["netns", "add", name])?;
        LIVE_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
        let path = format!("/run/netns/{name}");
        match File::open(&path) {
            Ok(file) => Ok(Netns { name: name.to_string(), file }),
            Err(e) => {
                let _ = run_tool("ip", &["netns", "del", name]);
                Err(BenchError::new(format!("cannot open {path}: {e}")))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` on a new thread inside this namespace and waits for it. Sockets created
    /// there stay in this namespace wherever they are used later.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, BenchError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(scope, || {
                    enter_namespace(&self.file, &self.name)?;
                    Ok(work())
                })
                .map_err(|e| BenchError::new(format!("cannot start a thread: {e}")))?;
            thread.join().map_err(|_| BenchError::new(format!("a thread in namespace {} panicked", self.name)))?
        })
    }

    /// Starts `work` on a named thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: &str,
        work: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
    ) -> Result<JoinHandle<Result<T, BenchError>>, BenchError> {
        let file = self.file.try_clone().map_err(|e| BenchError::new(format!("cannot duplicate a namespace fd: {e}")))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                enter_namespace(&file, &name)?;
                work()
            })
            .map_err(|e| BenchError::new(format!("cannot start thread {thread_name}: {e}")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_tool("ip", &["netns", "del", &self.name]);
        LIVE_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).retain(|name| *name != self.name);
    }
}

/// Drop counters of both veth ends (`/proc/net/dev` inside each namespace) and of the
/// sending end's qdisc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethDrops {
    pub sender_tx: u64,
    pub sender_rx: u64,
    pub receiver_rx: u64,
    pub receiver_tx: u64,
    /// Packets `veth-a`'s qdisc refused because it was full: the flood's are refused sends
    /// (not counted as sent), the clients' are lost datagrams (their sockets do not set
    /// `IP_RECVERR`, so the kernel drops them silently).
    pub sender_qdisc: u64,
}

impl VethDrops {
    /// Drops of the two interfaces (not the qdisc): nonzero means a packet the kernel took
    /// from a sender vanished on the way, and no per-kind count can be trusted.
    pub fn interfaces(&self) -> u64 {
        self.sender_tx + self.sender_rx + self.receiver_rx + self.receiver_tx
    }

    fn since(&self, earlier: &VethDrops) -> VethDrops {
        VethDrops {
            sender_tx: self.sender_tx - earlier.sender_tx,
            sender_rx: self.sender_rx - earlier.sender_rx,
            receiver_rx: self.receiver_rx - earlier.receiver_rx,
            receiver_tx: self.receiver_tx - earlier.receiver_tx,
            sender_qdisc: self.sender_qdisc - earlier.sender_qdisc,
        }
    }
}

/// Packets the root qdisc of `interface` in namespace `netns` dropped (`tc -s -j`).
fn qdisc_drops(netns: &str, interface: &str) -> Result<u64, BenchError> {
    let output = tool_output("tc", &["-n", netns, "-s", "-j", "qdisc", "show", "dev", interface])?;
    let qdiscs: Value =
        serde_json::from_slice(&output).map_err(|e| BenchError::new(format!("cannot parse `tc -s -j qdisc` output: {e}")))?;
    Ok(qdiscs.as_array().into_iter().flatten().filter(|q| q["root"] == json!(true)).filter_map(|q| q["drops"].as_u64()).sum())
}

/// (rx drops, tx drops) of `interface` in the calling thread's namespace.
fn interface_drops(interface: &str) -> Result<(u64, u64), BenchError> {
    let table =
        std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| BenchError::new(format!("cannot read /proc/net/dev: {e}")))?;
    for line in table.lines() {
        let Some((name, values)) = line.split_once(':') else { continue };
        if name.trim() == interface {
            let fields: Vec<u64> = values.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            if fields.len() >= 12 {
                return Ok((fields[3], fields[11]));
            }
        }
    }
    Err(BenchError::new(format!("no interface {interface} in /proc/net/dev")))
}

/// UDP receive-buffer errors (datagrams a full socket buffer refused) in the calling thread's
/// namespace.
fn udp_receive_buffer_errors() -> Result<u64, BenchError> {
    let snmp =
        std::fs::read_to_string("/proc/thread-self/net/snmp").map_err(|e| BenchError::new(format!("cannot read /proc/net/snmp: {e}")))?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return Ok(0) };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0))
}

/// Two namespaces joined by a veth pair: `veth-a` = 10.77.x.1/24 in `sender`, `veth-b` =
/// 10.77.x.2/24 in `receiver`. Deleted (namespaces, and with them the pair) when dropped.
pub struct VethPair {
    pub sender: Netns,
    pub receiver: Netns,
    /// The x in 10.77.x.0/24.
    pub subnet: u8,
}

impl VethPair {
    pub fn create() -> Result<VethPair, BenchError> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let index = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let subnet = (1 + (pid as usize + index) % 254) as u8;
        let sender = Netns::create(&format!("{NETNS_PREFIX}{pid}-{index}-tx"))?;
        let receiver = Netns::create(&format!("{NETNS_PREFIX}{pid}-{index}-rx"))?;
        for netns in [&sender, &receiver] {
            // Best effort: without IPv6 the pair carries no router solicitations or MLD
            // reports, only what the scenario sends (and ARP).
            netns.run(|| {
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
            })?;
        }
        let (tx, rx) = (sender.name().to_string(), receiver.name().to_string());
        let sender_address = format!("10.77.{subnet}.1/24");
        let receiver_address = format!("10.77.{subnet}.2/24");
        let qdisc_limit = SENDER_QDISC_PACKETS.to_string();
        // One queue each way, as a single-queue NIC: with veth's default of one queue per CPU,
        // a flow's packets were at times judged on two CPUs at once under backpressure, and a
        // few fresh datagrams came out `replayed` (see bench/README.md), which would make the
        // per-kind accounting inexact for reasons outside the node.
        let one_queue = ["numtxqueues", "1", "numrxqueues", "1"];
        let mut add = vec!["-n", &tx, "link", "add", SENDER_INTERFACE];
        add.extend(one_queue);
        add.extend(["type", "veth", "peer", "name", RECEIVER_INTERFACE]);
        add.extend(one_queue);
        add.extend(["netns", &rx]);
        run_tool("ip", &add)?;
        run_tool("ip", &["-n", &tx, "addr", "add", &sender_address, "dev", SENDER_INTERFACE])?;
        run_tool("ip", &["-n", &rx, "addr", "add", &receiver_address, "dev", RECEIVER_INTERFACE])?;
        run_tool("ip", &["-n", &tx, "link", "set", SENDER_INTERFACE, "up"])?;
        run_tool("ip", &["-n", &rx, "link", "set", RECEIVER_INTERFACE, "up"])?;
        // A real qdisc instead of veth's noqueue: with native XDP on the peer, a full ring then
        // holds packets back instead of dropping them (see the module doc, "Accounting").
        run_tool("tc", &["-n", &tx, "qdisc", "replace", "dev", SENDER_INTERFACE, "root", "pfifo", "limit", &qdisc_limit])?;
        // The same path with the filter on and off (module doc, "Two modes, one path"): the
        // sender segments GSO sends into one packet per datagram, as a NIC puts them on the
        // wire (attaching XDP to veth-b turns this off on veth-a anyway), and veth-b receives
        // with NAPI and GRO, as a NIC driver does (with XDP it does so anyway).
        sender
            .run(|| run_tool("ethtool", &["-K", SENDER_INTERFACE, "tso", "off", "tx-udp-segmentation", "off", "tx-gso-list", "off"]))??;
        receiver.run(|| run_tool("ethtool", &["-K", RECEIVER_INTERFACE, "gro", "on"]))??;
        Ok(VethPair { sender, receiver, subnet })
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    pub fn receiver_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2)
    }

    pub fn drops(&self) -> Result<VethDrops, BenchError> {
        let (sender_rx, sender_tx) = self.sender.run(|| interface_drops(SENDER_INTERFACE))??;
        let (receiver_rx, receiver_tx) = self.receiver.run(|| interface_drops(RECEIVER_INTERFACE))??;
        let sender_qdisc = qdisc_drops(self.sender.name(), SENDER_INTERFACE)?;
        Ok(VethDrops { sender_tx, sender_rx, receiver_rx, receiver_tx, sender_qdisc })
    }
}

// ---- The forged datagrams -----------------------------------------------------------------

/// The four kinds of forged datagram the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForgedKind {
    /// A wrong link tag on the legitimate publisher's link id.
    BadTag,
    /// A copy of one valid datagram of the attacker's client link, already accepted once.
    Replayed,
    /// A link id the node does not have.
    UnknownLink,
    /// Correctly tagged (attacker's link, fresh sequence), single-publisher, naming the
    /// quarantined publisher.
    QuarantinedPublisher,
}

impl ForgedKind {
    pub const ALL: [ForgedKind; 4] = [ForgedKind::BadTag, ForgedKind::Replayed, ForgedKind::UnknownLink, ForgedKind::QuarantinedPublisher];

    /// The filter's verdict for it.
    pub fn verdict(self) -> Verdict {
        match self {
            ForgedKind::BadTag => Verdict::BadTag,
            ForgedKind::Replayed => Verdict::Replayed,
            ForgedKind::UnknownLink => Verdict::UnknownLink,
            ForgedKind::QuarantinedPublisher => Verdict::QuarantinedPublisher,
        }
    }

    /// The userspace counter for it.
    pub fn counter(self) -> Counter {
        match self {
            ForgedKind::BadTag => Counter::DatagramsBadTag,
            ForgedKind::Replayed => Counter::DatagramsReplayed,
            ForgedKind::UnknownLink => Counter::DatagramsUnknownLink,
            ForgedKind::QuarantinedPublisher => Counter::DatagramsQuarantinedPublisher,
        }
    }

    pub fn name(self) -> &'static str {
        self.verdict().name()
    }
}

/// Most datagrams per GSO send (the kernel allows 64 segments on every version we support).
const FLOOD_SEGMENTS_MAX: usize = 64;
/// Distinct templates per precomputed kind (variety in sequence and link id).
const TEMPLATES_PER_KIND: usize = 16;
/// First link id of the unknown ones.
const UNKNOWN_LINK_ID_FIRST: u32 = 0x7fff_0000;

/// What a flood thread needs to forge datagrams.
#[derive(Clone)]
struct ForgeryKeys {
    publisher_link_id: u32,
    publisher_link_key: LinkKey,
    attacker_link_id: u32,
    attacker_link_key: LinkKey,
    stream_part: StreamPartKey,
    quarantined_publisher: [u8; 20],
}

impl ForgeryKeys {
    /// The valid datagram whose copies are the replays: an Unsubscribe on the attacker's link
    /// (harmless when the node accepts the original), link sequence 1.
    fn replay_original(&self) -> [u8; HEADER_LENGTH] {
        let mut datagram = [0u8; HEADER_LENGTH];
        let fields = HeaderFields {
            kind: Kind::Unsubscribe,
            link_id: self.attacker_link_id,
            link_seq: 1,
            stream_part_key: self.stream_part.0,
            flags: 0,
            message_count: 0,
            total_length: HEADER_LENGTH as u16,
            publisher: [0; 20],
        };
        write_header(&fields, &self.attacker_link_key, &mut datagram);
        datagram
    }

    /// A quarantined-publisher datagram with link sequence `link_seq`.
    fn write_quarantined(&self, link_seq: u64, out: &mut [u8]) {
        let fields = HeaderFields {
            kind: Kind::Data,
            link_id: self.attacker_link_id,
            link_seq,
            stream_part_key: self.stream_part.0,
            flags: FLAG_SINGLE_PUBLISHER,
            message_count: 0,
            total_length: HEADER_LENGTH as u16,
            publisher: self.quarantined_publisher,
        };
        write_header(&fields, &self.attacker_link_key, out);
    }
}

/// Builds GSO batches of forged datagrams, round-robin over the kinds that still have quota.
struct Forger {
    keys: ForgeryKeys,
    bad_tag: Vec<[u8; HEADER_LENGTH]>,
    unknown_link: Vec<[u8; HEADER_LENGTH]>,
    replay: [u8; HEADER_LENGTH],
    /// Next link sequence for quarantined-publisher datagrams (the original replay is 1).
    next_seq: u64,
    cursor: usize,
}

impl Forger {
    fn new(keys: ForgeryKeys) -> Forger {
        let datagram = |link_id: u32, key: &LinkKey, link_seq: u64| {
            let mut bytes = [0u8; HEADER_LENGTH];
            let fields = HeaderFields {
                kind: Kind::Data,
                link_id,
                link_seq,
                stream_part_key: keys.stream_part.0,
                flags: 0,
                message_count: 0,
                total_length: HEADER_LENGTH as u16,
                publisher: [0; 20],
            };
            write_header(&fields, key, &mut bytes);
            bytes
        };
        let bad_tag = (0..TEMPLATES_PER_KIND as u64)
            .map(|i| {
                let mut bytes = datagram(keys.publisher_link_id, &keys.publisher_link_key, (1 << 40) + i);
                bytes[80] ^= 1; // never the right tag
                bytes
            })
            .collect();
        let stranger = LinkKey([0x5a; 32]);
        let unknown_link = (0..TEMPLATES_PER_KIND as u32).map(|i| datagram(UNKNOWN_LINK_ID_FIRST + i, &stranger, 1)).collect();
        let replay = keys.replay_original();
        Forger { keys, bad_tag, unknown_link, replay, next_seq: 2, cursor: 0 }
    }

    /// Appends up to `segments` datagrams to `out` (cleared first), taking kinds round-robin
    /// among those with `remaining` quota (`None`: unlimited), and counts them in `kinds`.
    fn fill(&mut self, segments: usize, remaining: &Option<[u64; 4]>, out: &mut Vec<u8>, kinds: &mut [u64; 4]) {
        out.clear();
        *kinds = [0; 4];
        let mut planned = [0u64; 4];
        for _ in 0..segments {
            let Some(index) = (0..4).map(|step| (self.cursor + step) % 4).find(|&k| remaining.is_none_or(|r| r[k] > planned[k])) else {
                break;
            };
            self.cursor = (index + 1) % 4;
            planned[index] += 1;
            let start = out.len();
            out.resize(start + HEADER_LENGTH, 0);
            let slot = &mut out[start..];
            match ForgedKind::ALL[index] {
                ForgedKind::BadTag => slot.copy_from_slice(&self.bad_tag[(planned[index] as usize) % TEMPLATES_PER_KIND]),
                ForgedKind::Replayed => slot.copy_from_slice(&self.replay),
                ForgedKind::UnknownLink => slot.copy_from_slice(&self.unknown_link[(planned[index] as usize) % TEMPLATES_PER_KIND]),
                ForgedKind::QuarantinedPublisher => {
                    self.keys.write_quarantined(self.next_seq, slot);
                    self.next_seq += 1;
                }
            }
        }
        *kinds = planned;
    }
}

/// What to flood with.
#[derive(Clone, Copy, Debug)]
pub struct FloodPlan {
    pub rate: FloodRate,
    /// Datagrams of each kind to send in total; `None`: until the phase's publisher is done.
    pub per_kind: Option<u64>,
    pub threads: usize,
}

/// What the flood sent (all threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodOutcome {
    /// Forged datagrams the kernel accepted, per [`ForgedKind::ALL`] index.
    pub sent: [u64; 4],
    /// Valid originals of the replays (one per thread), accepted by the node.
    pub replay_originals: u64,
    /// `sendmsg` calls refused (`ENOBUFS` from a full qdisc and the like); not counted as sent.
    pub send_errors: u64,
    /// From the first thread's start to the last one's end.
    pub elapsed: Duration,
}

impl FloodOutcome {
    pub fn sent_of(&self, kind: ForgedKind) -> u64 {
        self.sent[ForgedKind::ALL.iter().position(|k| *k == kind).expect("a kind")]
    }

    pub fn total(&self) -> u64 {
        self.sent.iter().sum()
    }

    pub fn sent_per_s(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The CPUs this process may run on (its affinity mask), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is an empty cpu_set_t; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the size of the set we own.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads a bit of the set we own; the index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Where flood thread `index` runs: the allowed CPUs except the first, which holds the node's
/// one shard (the node pins shard i to the i-th allowed CPU); `None` with a single CPU.
fn flood_cpu(index: usize) -> Option<usize> {
    let cpus = allowed_cpus();
    (cpus.len() >= 2).then(|| cpus[1 + index % (cpus.len() - 1)])
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), BenchError> {
    // SAFETY: all-zero is an empty cpu_set_t; CPU_SET sets one bit below CPU_SETSIZE (cpu
    // comes from the affinity mask).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sets the calling thread's affinity from the set we own.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(BenchError::new(format!("cannot pin a flood thread to CPU {cpu}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// One flood thread: a socket of its own, the replay original, then GSO batches.
fn flood_thread(
    cpu: Option<usize>,
    local: Ipv4Addr,
    target: SocketAddr,
    keys: ForgeryKeys,
    rate_per_s: Option<u64>,
    mut quota: Option<[u64; 4]>,
    stop: Arc<AtomicBool>,
) -> Result<FloodOutcome, BenchError> {
    precise_sleeps();
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    let started = Instant::now();
    let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("flood socket: {what}: {e}"));
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 0)).map_err(io("bind"))?;
    socket.connect(target).map_err(io("connect"))?;
    // ENOBUFS from a full qdisc is reported instead of silently dropped (module doc).
    runnel_dataplane::sockopt::set_int(&socket, libc::SOL_IP, libc::IP_RECVERR, 1).map_err(io("IP_RECVERR"))?;
    if runnel_dataplane::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20).is_err() {
        let _ = runnel_dataplane::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20);
    }
    let mut outcome = FloodOutcome::default();
    let mut forger = Forger::new(keys);
    socket.send(&forger.replay).map_err(io("sending the replay original"))?;
    outcome.replay_originals = 1;
    // The original must reach the filter before its copies (one socket keeps one queue, but
    // a pause costs nothing here).
    std::thread::sleep(Duration::from_millis(20));

    let pacer = rate_per_s.map(Pacer::new);
    let mut batch = Vec::with_capacity(FLOOD_SEGMENTS_MAX * HEADER_LENGTH);
    let mut kinds = [0u64; 4];
    let mut sent_total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut segments = FLOOD_SEGMENTS_MAX;
        if let Some(pacer) = &pacer {
            let allowed = pacer.due().saturating_sub(sent_total);
            if allowed == 0 {
                pacer.wait_for_next_tick();
                continue;
            }
            segments = segments.min(allowed as usize);
        }
        forger.fill(segments, &quota, &mut batch, &mut kinds);
        if batch.is_empty() {
            break; // every quota met
        }
        match send_gso(&socket, &batch, HEADER_LENGTH) {
            Ok(()) => {
                for (index, count) in kinds.iter().enumerate() {
                    outcome.sent[index] += count;
                    if let Some(quota) = &mut quota {
                        quota[index] -= count;
                    }
                }
                sent_total += kinds.iter().sum::<u64>();
            }
            Err(error) => {
                outcome.send_errors += 1;
                if !matches!(error.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED)) {
                    return Err(BenchError::new(format!("flood send: {error}")));
                }
                std::thread::yield_now();
            }
        }
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

// ---- The scenario --------------------------------------------------------------------------

/// The node's first (and, with one shard, only) port in the receiving namespace.
pub const NODE_PORT: u16 = 7000;
const PUBLISHER_LINK_ID: u32 = 1000;
const SUBSCRIBER_LINK_ID: u32 = 1001;
const ATTACKER_LINK_ID: u32 = 1002;
/// The stream part every legitimate message goes to.
pub const STREAM_PART: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/runnel-xdp#0";
/// Payload byte 0 of readiness probes; phases use 1..=255.
const PROBE_TAG: u8 = 0;
/// How long a publisher keeps answering NAKs after its last message.
const PUBLISHER_LINGER: Duration = Duration::from_millis(300);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const SETTLE_QUIET: Duration = Duration::from_millis(500);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A counted flood that has not finished this long after the publisher did is stopped.
const FLOOD_OVERRUN_MAX: Duration = Duration::from_secs(10);
/// Merkle batch the legitimate publisher signs at most (it signs at every 1 ms flush).
const LEGIT_BATCH_SIZE_MAX: usize = 256;

/// Where the node's filter runs in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterChoice {
    /// `[xdp] mode = "native"` on `veth-b` (the node does not start without it).
    XdpNative,
    /// `[xdp] mode = "off"`: the same checks in the shards.
    Off,
}

impl FilterChoice {
    pub fn name(self) -> &'static str {
        match self {
            FilterChoice::XdpNative => "xdp-native",
            FilterChoice::Off => "userspace",
        }
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], BenchError> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| BenchError::new(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes)
}

/// Legitimate traffic of one phase.
#[derive(Clone, Copy, Debug)]
pub struct LegitPlan {
    pub messages: u64,
    pub rate_per_s: u64,
    pub payload_length: usize,
}

/// One phase: legitimate traffic, optionally under a flood.
#[derive(Clone, Debug)]
pub struct PhasePlan {
    pub name: String,
    pub legit: LegitPlan,
    pub flood: Option<FloodPlan>,
}

/// (tag, sequence) of every message the subscriber received.
type Received = Arc<Mutex<Vec<(u8, u64)>>>;

/// The subscriber: a thread in the sending namespace that records what it receives.
struct SubscriberThread {
    stop: Arc<AtomicBool>,
    received: Received,
    join: Option<JoinHandle<Result<(), BenchError>>>,
}

impl SubscriberThread {
    fn start(netns: &Netns, link: ClientLinkConfig, part: StreamPartKey) -> Result<SubscriberThread, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let (thread_stop, sink) = (stop.clone(), received.clone());
        let join = netns.spawn("xdp-subscriber", move || {
            let options = ClientOptions { publisher_key: None, verify: false, ..ClientOptions::default() };
            let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("subscriber: {what}: {e}"));
            let mut client = UdpClient::connect_with(&link, options).map_err(io("connect"))?;
            client.subscribe(&part).map_err(io("subscribe"))?;
            let mut batch = Vec::new();
            while !thread_stop.load(Ordering::Relaxed) {
                client
                    .recv(Duration::from_millis(20), |delivery| {
                        if let Some(entry) = read_payload(delivery.payload) {
                            batch.push(entry);
                        }
                    })
                    .map_err(io("receive"))?;
                if !batch.is_empty() {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).append(&mut batch);
                }
            }
            Ok(())
        })?;
        Ok(SubscriberThread { stop, received, join: Some(join) })
    }

    fn count(&self, tag: u8) -> usize {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(t, _)| *t == tag).count()
    }

    fn take(&self, tag: u8) -> Vec<u64> {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let taken = received.iter().filter(|(t, _)| *t == tag).map(|(_, s)| *s).collect();
        received.retain(|(t, _)| *t != tag);
        taken
    }

    /// Fails if the thread ended (with its error).
    fn check_running(&mut self) -> Result<(), BenchError> {
        if self.join.as_ref().is_some_and(|join| join.is_finished()) {
            let join = self.join.take().expect("checked");
            return match join.join() {
                Ok(Ok(())) => Err(BenchError::new("the subscriber stopped early")),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(BenchError::new("the subscriber panicked")),
            };
        }
        Ok(())
    }
}

impl Drop for SubscriberThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn write_payload(payload: &mut [u8], tag: u8, sequence: u64) {
    payload[0] = tag;
    payload[1..9].copy_from_slice(&sequence.to_le_bytes());
}

fn read_payload(payload: &[u8]) -> Option<(u8, u64)> {
    (payload.len() >= 9).then(|| (payload[0], u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"))))
}

/// What the legitimate publisher did.
#[derive(Clone, Copy, Debug)]
struct LegitOutcome {
    published: u64,
    /// First message to last flush (without the linger).
    window: Duration,
}

/// Publishes `plan.messages` paced at `plan.rate_per_s` (a burst and a flush per 1 ms tick),
/// then lingers to answer NAKs. Runs on the calling thread.
fn publish_legit(link: &ClientLinkConfig, part: StreamPartKey, tag: u8, plan: LegitPlan) -> Result<LegitOutcome, BenchError> {
    precise_sleeps();
    let options = ClientOptions {
        publisher_key: Some(PublisherKey::generate()),
        signing: SigningMode::Batch { batch_size_max: LEGIT_BATCH_SIZE_MAX },
        verify: false,
        gso: true,
    };
    let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("publisher: {what}: {e}"));
    let mut client = UdpClient::connect_with(link, options).map_err(io("connect"))?;
    let mut payload = vec![0u8; plan.payload_length.max(9)];
    let pacer = Pacer::new(plan.rate_per_s);
    let started = Instant::now();
    let timestamp_ms = unix_time_ms();
    let mut published = 0u64;
    while published < plan.messages {
        let due = pacer.due().min(plan.messages);
        while published < due {
            write_payload(&mut payload, tag, published);
            client.publish(&part, &Outgoing::binary(timestamp_ms, &payload)).map_err(io("publish"))?;
            published += 1;
        }
        client.flush().map_err(io("flush"))?;
        if published < plan.messages {
            pacer.wait_for_next_tick();
        }
    }
    let window = started.elapsed();
    client.linger(PUBLISHER_LINGER).map_err(io("linger"))?;
    Ok(LegitOutcome { published, window })
}

/// CPU time (utime + stime) of this process's node shard threads (`runnel-shard*`), in ns.
pub fn shard_cpu_ns() -> Result<u64, BenchError> {
    let entries = std::fs::read_dir("/proc/self/task").map_err(|e| BenchError::new(format!("cannot list /proc/self/task: {e}")))?;
    let mut ticks = 0u64;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with("runnel-shard") {
            continue;
        }
        // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |index: usize| fields.get(index - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(14) + field(15);
    }
    Ok(ticks_to_ns(ticks))
}

/// Softirq time of the whole machine (all CPUs) from `/proc/stat`, in ns.
pub fn softirq_ns() -> Result<u64, BenchError> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| BenchError::new(format!("cannot read /proc/stat: {e}")))?;
    let line = stat.lines().find(|line| line.starts_with("cpu ")).ok_or_else(|| BenchError::new("no cpu line in /proc/stat"))?;
    // cpu user nice system idle iowait irq softirq ...
    let softirq = line.split_whitespace().nth(7).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Ok(ticks_to_ns(softirq))
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.saturating_mul(1_000_000_000 / per_s)
}

fn summed(counters: &[Counters]) -> Counters {
    let mut total = Counters::default();
    for shard in counters {
        total.merge(shard);
    }
    total
}

/// What the node and the machine looked like at one instant.
struct Snapshot {
    at: Instant,
    counters: Counters,
    xdp: Option<[u64; VERDICT_COUNT]>,
    shard_cpu_ns: u64,
    softirq_ns: u64,
    drops: VethDrops,
    /// (receiver, sender) namespaces.
    udp_receive_buffer_errors: (u64, u64),
}

/// A running node with its subscriber. Field order is drop order: subscriber, then node.
struct RunningNode {
    subscriber: SubscriberThread,
    handle: NodeHandle,
    filter: FilterChoice,
}

/// The veth attack scenario (module doc): a node in the receiving namespace, clients and
/// flood in the sending one. Field order is drop order: the node stops before the namespaces
/// are deleted.
pub struct VethScenario {
    node: Option<RunningNode>,
    publisher_link: ClientLinkConfig,
    subscriber_link: ClientLinkConfig,
    keys: ForgeryKeys,
    next_tag: u8,
    veth: VethPair,
}

impl VethScenario {
    /// Creates the namespaces and the veth pair, and fresh link keys; no node yet.
    pub fn create() -> Result<VethScenario, BenchError> {
        let veth = VethPair::create()?;
        let node = SocketAddr::from((veth.receiver_ip(), NODE_PORT));
        let link = |link_id: u32| -> Result<ClientLinkConfig, BenchError> {
            Ok(ClientLinkConfig {
                node,
                node_shards: 1,
                link_id,
                key: LinkKey(random_bytes()?),
                datagram_length_max: DATAGRAM_LENGTH_DEFAULT,
            })
        };
        let publisher_link = link(PUBLISHER_LINK_ID)?;
        let subscriber_link = link(SUBSCRIBER_LINK_ID)?;
        let attacker_link = link(ATTACKER_LINK_ID)?;
        let stream_part = StreamPart::parse(STREAM_PART).map_err(|e| BenchError::new(e.0))?.key();
        let keys = ForgeryKeys {
            publisher_link_id: publisher_link.link_id,
            publisher_link_key: publisher_link.key,
            attacker_link_id: attacker_link.link_id,
            attacker_link_key: attacker_link.key,
            stream_part,
            quarantined_publisher: PublisherKey::generate().address(),
        };
        Ok(VethScenario { node: None, publisher_link, subscriber_link, keys, next_tag: 1, veth })
    }

    pub fn veth(&self) -> &VethPair {
        &self.veth
    }

    /// The running node, if any.
    pub fn node(&self) -> Option<&NodeHandle> {
        self.node.as_ref().map(|node| &node.handle)
    }

    /// The publisher the node was told to quarantine.
    pub fn quarantined_publisher(&self) -> [u8; 20] {
        self.keys.quarantined_publisher
    }

    fn node_config(&self, filter: FilterChoice) -> String {
        let mut config = format!(
            "[node]\nlisten = \"{}:{NODE_PORT}\"\nshards = 1\ndatagram_length_max = {DATAGRAM_LENGTH_DEFAULT}\nverify = \"all\"\n\n\
             [xdp]\nmode = \"{}\"\ninterface = \"{RECEIVER_INTERFACE}\"\n",
            self.veth.receiver_ip(),
            match filter {
                FilterChoice::XdpNative => "native",
                FilterChoice::Off => "off",
            }
        );
        for (link_id, key) in [
            (self.publisher_link.link_id, &self.publisher_link.key),
            (self.subscriber_link.link_id, &self.subscriber_link.key),
            (self.keys.attacker_link_id, &self.keys.attacker_link_key),
        ] {
            let hex: String = key.0.iter().map(|byte| format!("{byte:02x}")).collect();
            let _ = write!(config, "\n[[links]]\nid = {link_id}\nkey = \"{hex}\"\nrole = \"client\"\n");
        }
        config
    }

    /// Stops any running node, starts one with `filter`, quarantines the publisher, starts
    /// the subscriber, and returns once a probe message reached the subscriber and a
    /// quarantined-publisher datagram was dropped by the filter.
    pub fn start_node(&mut self, filter: FilterChoice) -> Result<(), BenchError> {
        self.stop_node()?;
        let config = NodeConfig::parse(&self.node_config(filter))
            .map_err(|e| BenchError::new(format!("generated node config is invalid (a bug): {e}")))?;
        let handle =
            self.veth.receiver.run(move || Node::start(config))?.map_err(|e| BenchError::new(format!("the node did not start: {e}")))?;
        let update = FilterUpdate::QuarantinePublisher { publisher: self.keys.quarantined_publisher, until_ns: u64::MAX };
        handle.update_filter(update).map_err(|e| BenchError::new(format!("quarantining the publisher: {e}")))?;
        let subscriber = SubscriberThread::start(&self.veth.sender, self.subscriber_link.clone(), self.keys.stream_part)?;
        self.node = Some(RunningNode { subscriber, handle, filter });
        self.wait_for_path()?;
        self.wait_for_quarantine()
    }

    /// Stops the node (and its subscriber), reporting a shard's error.
    pub fn stop_node(&mut self) -> Result<(), BenchError> {
        if let Some(node) = self.node.take() {
            drop(node.subscriber);
            node.handle.stop().map_err(|e| BenchError::new(format!("the node stopped with an error: {e}")))?;
        }
        Ok(())
    }

    fn running(&mut self) -> Result<&mut RunningNode, BenchError> {
        self.node.as_mut().ok_or_else(|| BenchError::new("no node running: call start_node first"))
    }

    /// Probe messages every 20 ms until the subscriber gets one.
    fn wait_for_path(&mut self) -> Result<(), BenchError> {
        let link = self.publisher_link.clone();
        let part = self.keys.stream_part;
        let node = self.node.as_mut().expect("started");
        let subscriber = &mut node.subscriber;
        let received = subscriber.received.clone();
        let seen = move || received.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(tag, _)| *tag == PROBE_TAG);
        let result = self.veth.sender.run(move || -> Result<(), BenchError> {
            let options =
                ClientOptions { publisher_key: Some(PublisherKey::generate()), signing: SigningMode::PerMessage, verify: false, gso: true };
            let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("probe publisher: {what}: {e}"));
            let mut probe = UdpClient::connect_with(&link, options).map_err(io("connect"))?;
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut payload = [0u8; 16];
            let mut sequence = 0;
            while !seen() {
                if Instant::now() > deadline {
                    return Err(BenchError::new(format!("no probe message reached the subscriber within {READY_TIMEOUT:?}")));
                }
                write_payload(&mut payload, PROBE_TAG, sequence);
                sequence += 1;
                probe.publish(&part, &Outgoing::binary(unix_time_ms(), &payload)).map_err(io("publish"))?;
                probe.flush().map_err(io("flush"))?;
                std::thread::sleep(Duration::from_millis(20));
            }
            probe.linger(Duration::from_millis(50)).map_err(io("linger"))
        })?;
        subscriber.check_running()?;
        result?;
        subscriber.take(PROBE_TAG);
        Ok(())
    }

    /// Quarantined-publisher datagrams every 20 ms (fresh sequences, a socket of their own)
    /// until the filter counts one: the quarantine is in force before any flood.
    fn wait_for_quarantine(&mut self) -> Result<(), BenchError> {
        let node = self.node.as_ref().expect("started");
        let observed = |handle: &NodeHandle| match node.filter {
            FilterChoice::XdpNative => handle.xdp_verdicts().map_or(0, |v| v[Verdict::QuarantinedPublisher as usize]),
            FilterChoice::Off => summed(&handle.counters()).get(Counter::DatagramsQuarantinedPublisher),
        };
        let before = observed(&node.handle);
        let keys = self.keys.clone();
        let target = SocketAddr::from((self.veth.receiver_ip(), NODE_PORT));
        let local = self.veth.sender_ip();
        let socket = self
            .veth
            .sender
            .run(move || UdpSocket::bind(SocketAddrV4::new(local, 0)))?
            .map_err(|e| BenchError::new(format!("probe socket: {e}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut datagram = [0u8; HEADER_LENGTH];
        let mut link_seq = 1;
        while observed(&node.handle) == before {
            if Instant::now() > deadline {
                return Err(BenchError::new(format!(
                    "the filter did not drop a quarantined publisher's datagram within {READY_TIMEOUT:?}"
                )));
            }
            keys.write_quarantined(link_seq, &mut datagram);
            link_seq += 1;
            socket.send_to(&datagram, target).map_err(|e| BenchError::new(format!("probe send: {e}")))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, BenchError> {
        let node = self.node.as_ref().ok_or_else(|| BenchError::new("no node running"))?;
        Ok(Snapshot {
            at: Instant::now(),
            counters: summed(&node.handle.counters()),
            xdp: node.handle.xdp_verdicts(),
            shard_cpu_ns: shard_cpu_ns()?,
            softirq_ns: softirq_ns()?,
            drops: self.veth.drops()?,
            udp_receive_buffer_errors: (
                self.veth.receiver.run(udp_receive_buffer_errors)??,
                self.veth.sender.run(udp_receive_buffer_errors)??,
            ),
        })
    }

    /// Forged datagrams the filter has counted so far, per kind: XDP verdicts with XDP on,
    /// the shards' counters with it off.
    fn forged_counted(&self) -> [u64; 4] {
        let Some(node) = &self.node else { return [0; 4] };
        match node.filter {
            FilterChoice::XdpNative => {
                let verdicts = node.handle.xdp_verdicts().unwrap_or([0; VERDICT_COUNT]);
                ForgedKind::ALL.map(|kind| verdicts[kind.verdict() as usize])
            }
            FilterChoice::Off => {
                let counters = summed(&node.handle.counters());
                ForgedKind::ALL.map(|kind| counters.get(kind.counter()))
            }
        }
    }

    /// Runs one phase: the flood (if any) starts, the publisher sends its messages, the flood
    /// stops (or finishes its counts), the subscriber drains, the counters settle.
    pub fn run_phase(&mut self, plan: &PhasePlan) -> Result<PhaseOutcome, BenchError> {
        let filter = self.running()?.filter;
        let tag = self.next_tag;
        self.next_tag = if self.next_tag == u8::MAX { 1 } else { self.next_tag + 1 };
        let forged_before = self.forged_counted();
        let before = self.snapshot()?;

        let stop_flood = Arc::new(AtomicBool::new(false));
        let mut flood_threads = Vec::new();
        if let Some(flood) = plan.flood {
            let threads = flood.threads.max(1);
            let target = SocketAddr::from((self.veth.receiver_ip(), NODE_PORT));
            for index in 0..threads {
                let share = |total: u64| total / threads as u64 + u64::from((index as u64) < total % threads as u64);
                let rate = match flood.rate {
                    FloodRate::PerSecond(rate) => Some(share(rate).max(1)),
                    FloodRate::Max => None,
                };
                let quota = flood.per_kind.map(|per_kind| [share(per_kind); 4]);
                let (keys, stop, local) = (self.keys.clone(), stop_flood.clone(), self.veth.sender_ip());
                let cpu = flood_cpu(index);
                flood_threads.push(
                    self.veth
                        .sender
                        .spawn(&format!("xdp-flood-{index}"), move || flood_thread(cpu, local, target, keys, rate, quota, stop))?,
                );
            }
        }

        let (link, part) = (self.publisher_link.clone(), self.keys.stream_part);
        let legit = plan.legit;
        let published = self.veth.sender.run(move || publish_legit(&link, part, tag, legit));
        if plan.flood.is_some_and(|flood| flood.per_kind.is_none()) {
            stop_flood.store(true, Ordering::Relaxed);
        }
        let flood = join_flood(flood_threads, &stop_flood);
        let published = published??;
        let flood = flood?;

        // Drain: until everything arrived or nothing more did for a while.
        let subscriber = &mut self.running()?.subscriber;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let (mut last, mut last_change) = (subscriber.count(tag), Instant::now());
        while (last as u64) < published.published && last_change.elapsed() < DRAIN_QUIET && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            subscriber.check_running()?;
            let now = subscriber.count(tag);
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
        }
        let after_drain = self.snapshot()?;

        // Settle: the filter's counts reach what was sent, or stop moving (XDP counters are
        // sampled every 100 ms by the node's policy thread).
        if let Some(flood) = &flood {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            let (mut last, mut last_change) = (self.forged_counted(), Instant::now());
            loop {
                let reached = (0..4).all(|k| last[k] - forged_before[k] >= flood.sent[k]);
                if reached || last_change.elapsed() >= SETTLE_QUIET || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                let now = self.forged_counted();
                if now != last {
                    (last, last_change) = (now, Instant::now());
                }
            }
        }
        let after = self.snapshot()?;
        let node = self.node.as_ref().expect("running");
        Ok(PhaseOutcome {
            name: plan.name.clone(),
            filter,
            filter_mode: node.handle.filter_mode().clone(),
            legit: plan.legit,
            published: published.published,
            publish_window: published.window,
            received: node.subscriber.take(tag),
            flood,
            xdp_verdicts: match (before.xdp, after.xdp) {
                (Some(b), Some(a)) => Some(std::array::from_fn(|i| a[i] - b[i])),
                _ => None,
            },
            xdp_verdicts_total: after.xdp,
            counters_before: before.counters,
            counters_after: after.counters,
            active_window: after_drain.at - before.at,
            shard_cpu_ns: after_drain.shard_cpu_ns - before.shard_cpu_ns,
            softirq_ns: after_drain.softirq_ns - before.softirq_ns,
            veth_drops: after.drops.since(&before.drops),
            node_receive_buffer_errors: after.udp_receive_buffer_errors.0 - before.udp_receive_buffer_errors.0,
            client_receive_buffer_errors: after.udp_receive_buffer_errors.1 - before.udp_receive_buffer_errors.1,
        })
    }
}

/// Joins the flood threads, stopping them if they overrun; sums what they sent.
fn join_flood(threads: Vec<JoinHandle<Result<FloodOutcome, BenchError>>>, stop: &AtomicBool) -> Result<Option<FloodOutcome>, BenchError> {
    if threads.is_empty() {
        return Ok(None);
    }
    let deadline = Instant::now() + FLOOD_OVERRUN_MAX;
    while threads.iter().any(|thread| !thread.is_finished()) {
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut total = FloodOutcome::default();
    for thread in threads {
        let outcome = thread.join().map_err(|_| BenchError::new("a flood thread panicked"))??;
        for (sum, sent) in total.sent.iter_mut().zip(outcome.sent) {
            *sum += sent;
        }
        total.replay_originals += outcome.replay_originals;
        total.send_errors += outcome.send_errors;
        total.elapsed = total.elapsed.max(outcome.elapsed);
    }
    Ok(Some(total))
}

/// What one phase measured.
#[derive(Clone, Debug)]
pub struct PhaseOutcome {
    pub name: String,
    pub filter: FilterChoice,
    pub filter_mode: FilterMode,
    pub legit: LegitPlan,
    pub published: u64,
    /// The publisher's first message to its last flush.
    pub publish_window: Duration,
    /// Sequences of this phase's messages the subscriber received, in arrival order.
    pub received: Vec<u64>,
    pub flood: Option<FloodOutcome>,
    /// XDP verdicts counted during the phase (`None` with XDP off).
    pub xdp_verdicts: Option<[u64; VERDICT_COUNT]>,
    /// XDP verdicts since the node started.
    pub xdp_verdicts_total: Option<[u64; VERDICT_COUNT]>,
    /// The node's counters (summed over shards) before and after the phase.
    pub counters_before: Counters,
    pub counters_after: Counters,
    /// Phase start to the end of the drain: the window of the CPU figures.
    pub active_window: Duration,
    /// utime + stime of the node's shard threads over `active_window`.
    pub shard_cpu_ns: u64,
    /// Softirq time of the machine over `active_window` (XDP on veth runs there).
    pub softirq_ns: u64,
    pub veth_drops: VethDrops,
    /// Datagrams a full socket buffer refused in the receiving namespace (the node's socket).
    pub node_receive_buffer_errors: u64,
    /// The same in the sending namespace (the clients' sockets).
    pub client_receive_buffer_errors: u64,
}

impl PhaseOutcome {
    /// Distinct messages of this phase the subscriber received.
    pub fn delivered(&self) -> u64 {
        let mut sequences = self.received.clone();
        sequences.sort_unstable();
        sequences.dedup();
        sequences.len() as u64
    }

    /// Client sends (each one or a GSO run of datagrams) that `veth-a`'s full qdisc dropped:
    /// its drops minus the flood's refused sends (every flood send error is a refusal there
    /// when the veth counters are zero). Legitimate traffic lost on the sending side.
    pub fn client_sends_lost(&self) -> u64 {
        self.veth_drops.sender_qdisc.saturating_sub(self.flood.map_or(0, |flood| flood.send_errors))
    }

    /// Delivered messages / the publisher's window.
    pub fn delivered_per_s(&self) -> f64 {
        self.delivered() as f64 / self.publish_window.as_secs_f64().max(1e-9)
    }

    pub fn published_per_s(&self) -> f64 {
        self.published as f64 / self.publish_window.as_secs_f64().max(1e-9)
    }

    /// The change of one node counter during the phase.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters_after.get(counter) - self.counters_before.get(counter)
    }

    pub fn shard_cpu_us_per_message(&self) -> f64 {
        self.shard_cpu_ns as f64 / 1000.0 / self.delivered().max(1) as f64
    }

    pub fn softirq_us_per_message(&self) -> f64 {
        self.softirq_ns as f64 / 1000.0 / self.delivered().max(1) as f64
    }

    pub fn shard_cpu_percent(&self) -> f64 {
        self.shard_cpu_ns as f64 / self.active_window.as_nanos().max(1) as f64 * 100.0
    }

    pub fn softirq_percent(&self) -> f64 {
        self.softirq_ns as f64 / self.active_window.as_nanos().max(1) as f64 * 100.0
    }

    /// Every counter that explains where forged and legitimate datagrams went, for failure
    /// messages and the report.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("phase {} ({}): published {}, delivered {}", self.name, self.filter_mode, self.published, self.delivered());
        if let Some(flood) = &self.flood {
            let _ = write!(out, "\n  forged sent:");
            for kind in ForgedKind::ALL {
                let _ = write!(out, " {}={}", kind.name(), flood.sent_of(kind));
            }
            let _ = write!(
                out,
                " (replay originals {}, send errors {}, {:.0}/s)",
                flood.replay_originals,
                flood.send_errors,
                flood.sent_per_s()
            );
        }
        if let Some(verdicts) = &self.xdp_verdicts {
            let _ = write!(out, "\n  xdp verdicts (phase):");
            for verdict in Verdict::ALL {
                let _ = write!(out, " {}={}", verdict.name(), verdicts[verdict as usize]);
            }
        }
        if let Some(verdicts) = &self.xdp_verdicts_total {
            let _ = write!(out, "\n  xdp verdicts (node total):");
            for verdict in Verdict::ALL {
                let _ = write!(out, " {}={}", verdict.name(), verdicts[verdict as usize]);
            }
        }
        let _ = write!(out, "\n  node counters (phase, nonzero):");
        for counter in Counter::ALL {
            let value = self.counter(counter);
            if value != 0 {
                let _ = write!(out, " {}={value}", counter.name());
            }
        }
        let _ = write!(
            out,
            "\n  drops: veth-a qdisc {} (flood refusals and lost client datagrams), veth-a tx {} rx {}, veth-b rx {} tx {}; \
             full UDP receive buffers: node {}, clients {}",
            self.veth_drops.sender_qdisc,
            self.veth_drops.sender_tx,
            self.veth_drops.sender_rx,
            self.veth_drops.receiver_rx,
            self.veth_drops.receiver_tx,
            self.node_receive_buffer_errors,
            self.client_receive_buffer_errors
        );
        out
    }

    pub fn to_json(&self) -> Value {
        let flood = self.flood.map(|flood| {
            let sent: serde_json::Map<String, Value> =
                ForgedKind::ALL.iter().map(|k| (k.name().to_string(), json!(flood.sent_of(*k)))).collect();
            json!({
                "sent": sent,
                "sent_total": flood.total(),
                "sent_per_s": flood.sent_per_s(),
                "replay_originals": flood.replay_originals,
                "send_errors": flood.send_errors,
                "elapsed_s": flood.elapsed.as_secs_f64(),
            })
        });
        let verdicts = |verdicts: &Option<[u64; VERDICT_COUNT]>| {
            verdicts.map(|v| {
                Verdict::ALL
                    .iter()
                    .map(|verdict| (verdict.name().to_string(), json!(v[*verdict as usize])))
                    .collect::<serde_json::Map<_, _>>()
            })
        };
        let counters: serde_json::Map<String, Value> =
            Counter::ALL.iter().map(|c| (c.name().to_string(), json!(self.counter(*c)))).filter(|(_, v)| v != &json!(0)).collect();
        json!({
            "filter": self.filter.name(),
            "filter_mode": self.filter_mode.name(),
            "legit_rate_per_s": self.legit.rate_per_s,
            "published": self.published,
            "published_per_s": self.published_per_s(),
            "delivered": self.delivered(),
            "delivered_per_s": self.delivered_per_s(),
            "delivered_fraction": self.delivered() as f64 / self.published.max(1) as f64,
            "publish_window_s": self.publish_window.as_secs_f64(),
            "active_window_s": self.active_window.as_secs_f64(),
            "shard_cpu_ms": self.shard_cpu_ns as f64 / 1e6,
            "shard_cpu_percent": self.shard_cpu_percent(),
            "shard_cpu_us_per_message": self.shard_cpu_us_per_message(),
            "softirq_ms": self.softirq_ns as f64 / 1e6,
            "softirq_percent": self.softirq_percent(),
            "softirq_us_per_message": self.softirq_us_per_message(),
            "flood": flood,
            "xdp_verdicts": verdicts(&self.xdp_verdicts),
            "node_counters": counters,
            "sender_qdisc_drops": self.veth_drops.sender_qdisc,
            "client_sends_lost": self.client_sends_lost(),
            "veth_drops": self.veth_drops.interfaces(),
            "node_receive_buffer_errors": self.node_receive_buffer_errors,
            "client_receive_buffer_errors": self.client_receive_buffer_errors,
        })
    }
}

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

    fn keys() -> ForgeryKeys {
        ForgeryKeys {
            publisher_link_id: 1,
            publisher_link_key: LinkKey([1; 32]),
            attacker_link_id: 2,
            attacker_link_key: LinkKey([2; 32]),
            stream_part: StreamPartKey([3; 32]),
            quarantined_publisher: [4; 20],
        }
    }

    // Goal: batches interleave the four kinds, count exactly what they hold, stop at the
    // quotas, and each datagram is what its kind says (checked by the userspace filter, which
    // follows the same rules as the XDP program).
    #[test]
    fn forger_counts_and_forges_each_kind() {
        use runnel_dataplane::config::LinkRole;
        use runnel_dataplane::filter::{Filter, RateLimit};
        let keys = keys();
        let mut filter = Filter::new(false);
        filter.set_link(1, keys.publisher_link_key, LinkRole::Client, RateLimit::UNLIMITED);
        filter.set_link(2, keys.attacker_link_key, LinkRole::Client, RateLimit::UNLIMITED);
        filter.apply(&FilterUpdate::QuarantinePublisher { publisher: keys.quarantined_publisher, until_ns: u64::MAX });
        let from: SocketAddr = "10.77.1.1:5000".parse().unwrap();
        assert_eq!(filter.check(1, from, &keys.replay_original()), Verdict::Pass);
        let mut forger = Forger::new(keys);
        let mut quota = Some([10, 3, 0, 7]);
        let (mut batch, mut kinds) = (Vec::new(), [0u64; 4]);
        let mut verdicts = [0u64; VERDICT_COUNT];
        let mut total = [0u64; 4];
        loop {
            forger.fill(8, &quota, &mut batch, &mut kinds);
            if batch.is_empty() {
                break;
            }
            assert_eq!(batch.len(), kinds.iter().sum::<u64>() as usize * HEADER_LENGTH);
            for datagram in batch.chunks(HEADER_LENGTH) {
                verdicts[filter.check(1, from, datagram) as usize] += 1;
            }
            for (index, count) in kinds.iter().enumerate() {
                total[index] += count;
                quota.as_mut().unwrap()[index] -= count;
            }
        }
        assert_eq!(total, [10, 3, 0, 7]);
        for (index, kind) in ForgedKind::ALL.iter().enumerate() {
            assert_eq!(verdicts[kind.verdict() as usize], total[index], "{}", kind.name());
        }
        // Unlimited: full batches, round-robin.
        forger.fill(8, &None, &mut batch, &mut kinds);
        assert_eq!(kinds, [2, 2, 2, 2]);
    }

    // Goal: --flood-rate takes a positive number or `max`, nothing else.
    #[test]
    fn flood_rate_parses() {
        assert_eq!(FloodRate::parse("max").unwrap(), FloodRate::Max);
        assert_eq!(FloodRate::parse("250000").unwrap(), FloodRate::PerSecond(250_000));
        assert!(FloodRate::parse("0").is_err());
        assert!(FloodRate::parse("fast").is_err());
    }
}
