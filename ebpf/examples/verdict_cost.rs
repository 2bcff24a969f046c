//! What each verdict costs in the kernel: the real program run through `BPF_PROG_TEST_RUN`
//! with the kernel's own timer, on one crafted frame per verdict.
//!
//! Verdicts decided up to the replay window repeat one frame `--repeat` times (default
//! 1 000 000) in one call: every run gets the same verdict again. Verdicts decided after the
//! replay window (`quarantined_publisher`, `not_joined`, `not_permitted`, `rate_limited`,
//! `pass`) record the frame's sequence first, so a repeat would be `replayed`: they are the
//! mean of 10 000 single runs over fresh sequences ("fresh"), less the cost of the kernel's
//! clock reads around a single run (measured as the difference of the two methods on
//! `replayed`).
//!
//! Needs root. Prints a table, then the same numbers as one JSON line.
//!
//! ```text
//! cargo run --release -p runnel-ebpf --example verdict_cost [-- --repeat 1000000]
//! ```

use runnel_ebpf::{packet, LinkEntry, Verdict, XdpFilter, ROLE_NEIGHBOR, XDP_DROP, XDP_PASS};
use siphasher::sip::SipHasher24;
use std::net::{Ipv4Addr, SocketAddrV4};

const PORT: u16 = 7000;
const LINK: u32 = 1;
const RATE_LIMITED_LINK: u32 = 2;
const QUARANTINED_LINK: u32 = 3;
const PART: [u8; 32] = [0xa5; 32];
const RESTRICTED_PART: [u8; 32] = [0xb6; 32];
const NOT_JOINED_PART: [u8; 32] = [0xc7; 32];
const PUBLISHER: [u8; 20] = [0x77; 20];
const QUARANTINED_PUBLISHER: [u8; 20] = [0x66; 20];
const PASS_SAMPLES: u64 = 10_000;

fn key(link: u32) -> [u8; 32] {
    [link as u8; 32]
}

/// A tagged datagram (docs/protocol.md §2) of `total_length` bytes with a zero body.
fn datagram(link: u32, seq: u64, part: [u8; 32], publisher: Option<[u8; 20]>, total_length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; total_length];
    bytes[0..2].copy_from_slice(b"RN");
    bytes[2] = 1; // version
    bytes[3] = 1; // Data
    bytes[4..8].copy_from_slice(&link.to_le_bytes());
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    bytes[16..48].copy_from_slice(&part);
    if let Some(publisher) = publisher {
        bytes[48] = 1; // FLAG_SINGLE_PUBLISHER
        bytes[60..80].copy_from_slice(&publisher);
    }
    bytes[50] = 1; // message_count
    bytes[52..54].copy_from_slice(&(total_length as u16).to_le_bytes());
    let sip_key: [u8; 16] = key(link)[..16].try_into().expect("16 bytes");
    let tag = SipHasher24::new_with_key(&sip_key).hash(&bytes[..80]);
    bytes[80..88].copy_from_slice(&tag.to_le_bytes());
    bytes
}

fn frame(payload: &[u8], port: u16) -> Vec<u8> {
    packet::udp_ipv4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40_000), SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), port), payload)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut repeat: u32 = 1_000_000;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--repeat" => repeat = arguments.next().ok_or("--repeat needs a number")?.parse()?,
            other => return Err(format!("unknown argument {other:?} (expected --repeat N)").into()),
        }
    }
    let size = 1472; // a full Ethernet datagram: the common case under load

    let mut filter = XdpFilter::load().map_err(|error| format!("{error} (this benchmark runs the real XDP program: run it as root)"))?;
    filter.add_port(PORT)?;
    filter.set_link(LINK, &LinkEntry::new(key(LINK), ROLE_NEIGHBOR, 0, 0))?;
    // One datagram per hour, burst 1: over its rate for the whole run after the first datagram.
    let hourly = LinkEntry { emission_interval_ns: 3_600 * 1_000_000_000, ..LinkEntry::new(key(RATE_LIMITED_LINK), ROLE_NEIGHBOR, 0, 1) };
    filter.set_link(RATE_LIMITED_LINK, &hourly)?;
    filter.set_link(QUARANTINED_LINK, &LinkEntry::new(key(QUARANTINED_LINK), ROLE_NEIGHBOR, 0, 0))?;
    filter.quarantine_link(QUARANTINED_LINK, u64::MAX)?;
    filter.quarantine_publisher(QUARANTINED_PUBLISHER, u64::MAX)?;
    for part in [PART, RESTRICTED_PART] {
        filter.join(part)?;
    }
    filter.set_restricted(RESTRICTED_PART, true)?;
    filter.permit(PART, PUBLISHER, u64::MAX)?;

    let with_bad_tag = {
        let mut bytes = datagram(LINK, 1, PART, None, size);
        bytes[80] ^= 1;
        bytes
    };
    let with_bad_magic = {
        let mut bytes = datagram(LINK, 1, PART, None, size);
        bytes[0] = b'X';
        bytes
    };
    // Prime the replay window and the rate limiter so that their frames repeat as drops.
    let replayed = frame(&datagram(LINK, 1_000_000_000, PART, None, size), PORT);
    let rate_limited_first = frame(&datagram(RATE_LIMITED_LINK, 1, PART, None, size), PORT);
    assert_eq!(filter.test_run(&replayed, 1)?.action, XDP_PASS);
    assert_eq!(filter.test_run(&rate_limited_first, 1)?.action, XDP_PASS);

    // Verdicts decided before the replay window repeat one frame: every run gets the same
    // verdict again (a replayed frame stays replayed).
    let repeated: Vec<(Verdict, Vec<u8>)> = vec![
        (Verdict::NotRunnel, frame(&datagram(LINK, 1, PART, None, size), PORT + 1)),
        (Verdict::Malformed, frame(&with_bad_magic, PORT)),
        (Verdict::UnknownLink, frame(&datagram(99, 1, PART, None, size), PORT)),
        (Verdict::BadTag, frame(&with_bad_tag, PORT)),
        (Verdict::QuarantinedLink, frame(&datagram(QUARANTINED_LINK, 1, PART, None, size), PORT)),
        (Verdict::Replayed, replayed.clone()),
    ];
    // Verdicts decided after the replay window record the sequence first, so a repeated
    // frame turns into `replayed`: these get a fresh sequence per run.
    type FreshFrame = Box<dyn Fn(u64) -> Vec<u8>>;
    let fresh: Vec<(Verdict, FreshFrame)> = vec![
        (Verdict::QuarantinedPublisher, Box::new(move |seq| frame(&datagram(LINK, seq, PART, Some(QUARANTINED_PUBLISHER), size), PORT))),
        (Verdict::NotJoined, Box::new(move |seq| frame(&datagram(LINK, seq, NOT_JOINED_PART, None, size), PORT))),
        (Verdict::NotPermitted, Box::new(move |seq| frame(&datagram(LINK, seq, RESTRICTED_PART, Some(PUBLISHER), size), PORT))),
        (Verdict::RateLimited, Box::new(move |seq| frame(&datagram(RATE_LIMITED_LINK, seq, PART, None, size), PORT))),
        // Single publisher with a permission on a joined part: every lookup the program has.
        (Verdict::Pass, Box::new(move |seq| frame(&datagram(LINK, seq, PART, Some(PUBLISHER), size), PORT))),
    ];

    let mut rows: Vec<Row> = Vec::new();
    for (verdict, packet) in &repeated {
        let before = filter.verdict_counts()?;
        let outcome = filter.test_run(packet, repeat)?;
        let after = filter.verdict_counts()?;
        check(*verdict, outcome.action, after[*verdict as usize] - before[*verdict as usize], u64::from(repeat));
        rows.push(Row { verdict: *verdict, method: "repeat", runs: u64::from(repeat), ns_per_run: outcome.duration_ns_per_run });
    }

    // A single run's kernel timing includes one clock read; measure it on `replayed`, which
    // both methods can time, and subtract it from the single-run means.
    let single_replayed = mean_single_runs(&filter, Verdict::Replayed, |_| replayed.clone())?;
    let repeated_replayed = rows.iter().find(|row| row.verdict == Verdict::Replayed).expect("replayed is measured").ns_per_run;
    let single_run_overhead_ns = (single_replayed - repeated_replayed).max(0.0);
    let mut next_seq = 2_000_000_000u64;
    for (verdict, make) in &fresh {
        let first = next_seq;
        next_seq += PASS_SAMPLES;
        let mean = mean_single_runs(&filter, *verdict, |index| make(first + index))?;
        rows.push(Row { verdict: *verdict, method: "fresh", runs: PASS_SAMPLES, ns_per_run: mean - single_run_overhead_ns });
    }

    println!("XDP verdict cost, {size}-byte datagrams, BPF_PROG_TEST_RUN (kernel timer)");
    println!("single-run clock overhead subtracted from `fresh` rows: {single_run_overhead_ns:.1} ns");
    println!("{:<24} {:>8} {:>10} {:>12}", "verdict", "method", "ns/run", "runs");
    for row in &rows {
        println!("{:<24} {:>8} {:>10.1} {:>12}", row.verdict.name(), row.method, row.ns_per_run, row.runs);
    }
    let json: Vec<String> = rows
        .iter()
        .map(|row| {
            format!(
                "{{\"verdict\":\"{}\",\"method\":\"{}\",\"ns_per_run\":{:.1},\"runs\":{}}}",
                row.verdict.name(),
                row.method,
                row.ns_per_run,
                row.runs
            )
        })
        .collect();
    println!(
        "{{\"benchmark\":\"xdp_verdict_cost\",\"datagram_bytes\":{size},\"single_run_overhead_ns\":{single_run_overhead_ns:.1},\"results\":[{}]}}",
        json.join(",")
    );
    Ok(())
}

struct Row {
    verdict: Verdict,
    /// "repeat": one frame, `--repeat` runs in one call; "fresh": one run per frame.
    method: &'static str,
    runs: u64,
    ns_per_run: f64,
}

/// Asserts that every run got `verdict`: the right action, and `runs` counted under it.
fn check(verdict: Verdict, action: u32, counted: u64, runs: u64) {
    let expected_action = if verdict.is_drop() { XDP_DROP } else { XDP_PASS };
    assert_eq!(action, expected_action, "{}: unexpected action", verdict.name());
    assert_eq!(counted, runs, "{}: every run got this verdict", verdict.name());
}

/// Mean kernel-timed ns of PASS_SAMPLES single runs of `make(0..PASS_SAMPLES)`.
fn mean_single_runs(filter: &XdpFilter, verdict: Verdict, make: impl Fn(u64) -> Vec<u8>) -> Result<f64, Box<dyn std::error::Error>> {
    let frames: Vec<Vec<u8>> = (0..PASS_SAMPLES).map(make).collect();
    let before = filter.verdict_counts()?;
    let mut total_ns = 0.0;
    let mut action = XDP_PASS;
    for packet in &frames {
        let outcome = filter.test_run(packet, 1)?;
        action = outcome.action;
        total_ns += outcome.duration_ns_per_run;
    }
    let after = filter.verdict_counts()?;
    check(verdict, action, after[verdict as usize] - before[verdict as usize], PASS_SAMPLES);
    Ok(total_ns / PASS_SAMPLES as f64)
}
