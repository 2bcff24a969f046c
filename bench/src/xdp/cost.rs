//! Part 1: what the XDP program costs per verdict, timed by BPF_PROG_TEST_RUN.

use super::*;

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
