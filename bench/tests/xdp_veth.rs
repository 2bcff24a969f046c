//! The XDP filter in front of a real node, on a real veth pair between two network
//! namespaces, under a flood of forged datagrams. Needs root (CI has it).

use runnel_bench::xdp::{
    is_root, remove_live_namespaces, FilterChoice, FloodPlan, FloodRate, ForgedKind, LegitPlan, PhasePlan, VethScenario, NETNS_PREFIX,
    RECEIVER_INTERFACE,
};
use runnel_core::counters::Counter;
use runnel_ebpf::Verdict;
use runnel_node::node::FilterMode;
use std::time::Duration;

const LEGIT_MESSAGES: u64 = 3_000;
const LEGIT_RATE_PER_S: u64 = 3_000;
/// Forged datagrams of each of the four kinds: 100k in all.
const FORGED_PER_KIND: u64 = 25_000;
const FLOOD_RATE_PER_S: u64 = 100_000;
/// Longest this test may take before the watchdog ends the process (and deletes the
/// namespaces): every wait inside has its own shorter timeout, this catches a hang.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn namespaces_of_this_process() -> Vec<String> {
    let prefix = format!("{NETNS_PREFIX}{}-", std::process::id());
    std::fs::read_dir("/run/netns")
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)).collect())
        .unwrap_or_default()
}

// Goal: with the XDP filter attached natively to the node's veth, a flood of 100k forged
// datagrams (bad tags on the publisher's real link, replays of a valid datagram, unknown link
// ids, correctly tagged datagrams of a quarantined publisher) is dropped entirely in the
// kernel — every one of them counted under its own XDP verdict, none seen by the node's
// userspace — while a paced legitimate publisher's 3,000 messages all reach the subscriber;
// and the namespaces are gone afterwards.
#[test]
fn xdp_drops_every_forged_datagram_while_legit_messages_arrive() {
    assert!(is_root(), "this test loads an XDP program and creates network namespaces: run it as root");
    std::thread::spawn(|| {
        std::thread::sleep(TEST_TIMEOUT);
        eprintln!("xdp_veth: still running after {TEST_TIMEOUT:?}; deleting the namespaces and exiting");
        remove_live_namespaces();
        std::process::exit(1);
    });

    let mut scenario = VethScenario::create().unwrap_or_else(|e| panic!("creating the veth pair: {e}"));
    scenario.start_node(FilterChoice::XdpNative).unwrap_or_else(|e| panic!("starting the node with XDP: {e}"));
    let mode = scenario.node().expect("running").filter_mode().clone();
    assert_eq!(mode, FilterMode::Xdp { interface: RECEIVER_INTERFACE.into(), native: true });

    let plan = PhasePlan {
        name: "flood".into(),
        legit: LegitPlan { messages: LEGIT_MESSAGES, rate_per_s: LEGIT_RATE_PER_S, payload_length: 64 },
        flood: Some(FloodPlan { rate: FloodRate::PerSecond(FLOOD_RATE_PER_S), per_kind: Some(FORGED_PER_KIND), threads: 1 }),
    };
    let outcome = scenario.run_phase(&plan).unwrap_or_else(|e| panic!("running the phase: {e}"));
    let report = outcome.diagnostics();
    println!("{report}");
    let flood = outcome.flood.expect("a flood phase");
    let xdp = outcome.xdp_verdicts.expect("XDP verdicts with XDP on");

    // The counts below are exact only if every datagram the kernel accepted reached the
    // filter: neither veth end dropped anything. (Sends the full qdisc refused, if the
    // machine was slow, failed with ENOBUFS and are not counted as sent.)
    assert_eq!(outcome.veth_drops.interfaces(), 0, "veth dropped packets; {report}");
    assert_eq!(outcome.node_receive_buffer_errors + outcome.client_receive_buffer_errors, 0, "a socket buffer overflowed; {report}");
    for kind in ForgedKind::ALL {
        assert_eq!(flood.sent_of(kind), FORGED_PER_KIND, "{} not all sent; {report}", kind.name());
    }

    // Legitimate traffic: exactly the published set.
    let mut received = outcome.received.clone();
    received.sort_unstable();
    let expected: Vec<u64> = (0..LEGIT_MESSAGES).collect();
    assert_eq!(outcome.published, LEGIT_MESSAGES, "{report}");
    assert!(received == expected, "the subscriber got {} messages, not exactly 0..{LEGIT_MESSAGES} once each; {report}", received.len());

    // Userspace never saw a forged datagram (node totals, not just this phase: the
    // quarantine readiness probes were dropped in XDP too).
    for counter in [
        Counter::DatagramsBadTag,
        Counter::DatagramsUnknownLink,
        Counter::DatagramsReplayed,
        Counter::DatagramsQuarantinedPublisher,
        Counter::DatagramsMalformed,
        Counter::DatagramsQuarantinedLink,
    ] {
        assert_eq!(outcome.counters_after.get(counter), 0, "userspace counted {}; {report}", counter.name());
    }

    // XDP accounts for every forged datagram, per kind, exactly. Nothing else can land in
    // these verdicts during the phase: the legitimate clients tag every datagram with their
    // own link's key (never bad_tag or unknown_link), send each link sequence once from one
    // socket in order over one veth queue (never replayed: the other ways into `replayed`, a
    // replay-window lock busy for 64 attempts or a window the LRU map could not create, need
    // concurrent CPUs on one flow or 65,536 flows), and publish as a publisher nobody
    // quarantined; the readiness probes were counted before the phase's baseline.
    for kind in ForgedKind::ALL {
        assert_eq!(
            xdp[kind.verdict() as usize],
            flood.sent_of(kind),
            "xdp {} != forged {} sent; {report}",
            kind.verdict().name(),
            kind.name()
        );
    }
    for verdict in [Verdict::Malformed, Verdict::QuarantinedLink, Verdict::NotJoined, Verdict::NotPermitted, Verdict::RateLimited] {
        assert_eq!(xdp[verdict as usize], 0, "unexpected xdp {}; {report}", verdict.name());
    }
    // The replay originals passed, and so did the legitimate datagrams (more than none).
    assert!(xdp[Verdict::Pass as usize] > flood.replay_originals, "{report}");
    assert!(outcome.delivered() >= LEGIT_MESSAGES, "{report}");
    assert!(outcome.counter(Counter::FramesDelivered) > 0, "{report}");

    scenario.stop_node().unwrap_or_else(|e| panic!("stopping the node: {e}"));
    drop(scenario);
    assert!(namespaces_of_this_process().is_empty(), "namespaces left behind: {:?}", namespaces_of_this_process());
}
