//! The clock, the benchmark payload layout and latency statistics shared by every scenario.
//!
//! Publisher and subscribers run as threads of the benchmark process, so one monotonic clock
//! base ([`now_ns`]) serves both ends: the publisher writes its send time into the first 8
//! payload bytes (u64 little-endian nanoseconds since the base), byte 8 says which phase the
//! message belongs to (readiness, latency, or one step of the throughput search, so messages
//! that arrive late are never counted for the wrong step), and a subscriber computes latency as
//! its receive time minus that.
//!
//! [`Pacer`] schedules a fixed send rate. At high rates one sleep per message is far too coarse
//! (and costs a syscall each), so paced publishers send in bursts: every [`PACING_TICK`] they
//! send what the schedule says is due, flush once, and sleep until the next tick.
//!
//! Latency samples are kept per subscriber in a bounded vector ([`LatencySamples`],
//! `samples_max` each, extra samples counted and dropped) and merged and sorted at the end:
//! exact percentiles, no histogram error. Limit: memory is 8 bytes × samples_max ×
//! subscribers (the default bound is 100k samples per subscriber: 10 s at 10k msgs/s).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Payload byte 8 for readiness probes sent before measuring.
pub const PHASE_READINESS: u8 = 0;
/// Payload byte 8 for messages of the paced latency phase (the only ones sampled).
pub const PHASE_LATENCY: u8 = 1;
/// Payload byte 8 for messages of throughput-search step k is `PHASE_THROUGHPUT_FIRST + k`
/// (step 0 is the unpaced probe).
pub const PHASE_THROUGHPUT_FIRST: u8 = 2;
/// Phase values counted separately; anything at or above counts as readiness traffic.
pub const PHASES: usize = 16;
/// Interval at which paced publishers send what is due, in one burst and one flush.
pub const PACING_TICK: Duration = Duration::from_millis(1);
/// Smallest payload: timestamp (8 bytes) + phase (1 byte), rounded up.
pub const PAYLOAD_LENGTH_MIN: usize = 16;

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since the process-wide benchmark clock base (monotonic).
pub fn now_ns() -> u64 {
    clock_base().elapsed().as_nanos() as u64
}

/// Stamps `payload` with the current time and `phase`.
#[inline]
pub fn stamp(payload: &mut [u8], phase: u8) {
    payload[..8].copy_from_slice(&now_ns().to_le_bytes());
    payload[8] = phase;
}

/// The phase and send time of a received payload; `None` if it is too short to be ours.
#[inline]
pub fn read_stamp(payload: &[u8]) -> Option<(u8, u64)> {
    if payload.len() < 9 {
        return None;
    }
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&payload[..8]);
    Some((payload[8], u64::from_le_bytes(sent)))
}

/// A bounded set of latency samples in nanoseconds.
#[derive(Debug, Default)]
pub struct LatencySamples {
    pub samples_ns: Vec<u64>,
    pub samples_max: usize,
    /// Samples not kept because the set was full.
    pub dropped: u64,
}

impl LatencySamples {
    pub fn new(samples_max: usize) -> Self {
        Self { samples_ns: Vec::with_capacity(samples_max.min(1 << 20)), samples_max, dropped: 0 }
    }

    #[inline]
    pub fn record(&mut self, latency_ns: u64) {
        if self.samples_ns.len() < self.samples_max {
            self.samples_ns.push(latency_ns);
        } else {
            self.dropped += 1;
        }
    }
}

/// Percentiles of merged latency samples, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    /// Sorts all samples and reads the nearest-rank percentiles.
    pub fn from_samples(sets: Vec<LatencySamples>) -> Self {
        let mut all: Vec<u64> = sets.into_iter().flat_map(|set| set.samples_ns).collect();
        if all.is_empty() {
            return Self::default();
        }
        all.sort_unstable();
        let rank = |quantile: f64| {
            let index = ((quantile * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
            all[index] as f64 / 1000.0
        };
        Self { samples: all.len() as u64, p50_us: rank(0.50), p99_us: rank(0.99), p999_us: rank(0.999), max_us: rank(1.0) }
    }
}

/// Sets this thread's timer slack to 1 ns so short sleeps in paced phases wake on time
/// (the default slack of 50 µs would blur a 100 µs send interval).
pub fn precise_sleeps() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes a property of the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// A schedule of `rate_per_s` sends starting now: how many are due, and how long until the next.
pub struct Pacer {
    start: Instant,
    rate_per_s: u64,
}

impl Pacer {
    pub fn new(rate_per_s: u64) -> Self {
        Self { start: Instant::now(), rate_per_s: rate_per_s.max(1) }
    }

    /// Messages that should have been sent by now.
    pub fn due(&self) -> u64 {
        (self.start.elapsed().as_nanos() * self.rate_per_s as u128 / 1_000_000_000) as u64
    }

    /// Sleeps until the message after the first `sent` is due, that is until [`Pacer::due`]
    /// exceeds `sent` (returns at once if it already does). Waiting only until message
    /// `sent - 1` was due would return at once after every send and spin the publisher.
    pub fn wait_for(&self, sent: u64) {
        let due_at = self.start + Duration::from_nanos(((sent as u128 + 1) * 1_000_000_000 / self.rate_per_s as u128) as u64);
        let now = Instant::now();
        if due_at > now {
            std::thread::sleep(due_at - now);
        }
    }

    /// Sleeps until the next [`PACING_TICK`] boundary after now (counted from the start).
    pub fn wait_for_next_tick(&self) {
        let tick_ns = PACING_TICK.as_nanos();
        let elapsed_ns = self.start.elapsed().as_nanos();
        let next_ns = (elapsed_ns / tick_ns + 1) * tick_ns;
        std::thread::sleep(Duration::from_nanos((next_ns - elapsed_ns) as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: nearest-rank percentiles over merged sets are exact, and the bound drops extras.
    #[test]
    fn percentiles_and_bound() {
        let mut first = LatencySamples::new(60);
        let mut second = LatencySamples::new(1000);
        for i in 1..=100u64 {
            // 1..=100 µs, split across two subscribers.
            if i % 2 == 0 {
                first.record(i * 1000)
            } else {
                second.record(i * 1000)
            }
        }
        assert_eq!(first.dropped, 0);
        let summary = LatencySummary::from_samples(vec![first, second]);
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50_us, 50.0);
        assert_eq!(summary.p99_us, 99.0);
        assert_eq!(summary.max_us, 100.0);
        let mut small = LatencySamples::new(3);
        for i in 0..5 {
            small.record(i);
        }
        assert_eq!((small.samples_ns.len(), small.dropped), (3, 2));
    }

    // Goal: a burst-per-tick pacer sends close to its rate at 1M msgs/s (where a sleep per
    // message could not), and never more than is due.
    #[test]
    fn pacer_bursts_keep_the_rate() {
        precise_sleeps();
        let rate_per_s = 1_000_000u64;
        let pacer = Pacer::new(rate_per_s);
        let window = Duration::from_millis(200);
        let mut sent = 0u64;
        while pacer.start.elapsed() < window {
            let due = pacer.due();
            assert!(sent <= due);
            sent = due;
            pacer.wait_for_next_tick();
        }
        let expected = rate_per_s as f64 * pacer.start.elapsed().as_secs_f64();
        assert!((sent as f64) > expected * 0.97 && (sent as f64) <= expected, "sent {sent}, expected about {expected}");
    }

    // Goal: after sending everything due, `wait_for` sleeps until the next message is due
    // instead of returning at once (which made paced publishers spin a core).
    #[test]
    fn pacer_waits_for_the_next_message() {
        precise_sleeps();
        let pacer = Pacer::new(100);
        for sent in 0..3 {
            assert_eq!(pacer.due(), sent, "nothing is due early");
            pacer.wait_for(sent);
            assert!(pacer.due() > sent, "woke before message {sent} was due");
        }
        let elapsed = pacer.start.elapsed();
        assert!(elapsed >= Duration::from_millis(30) && elapsed < Duration::from_millis(200), "3 messages at 100/s took {elapsed:?}");
    }

    // Goal: a stamp written by the publisher reads back with its phase and a time not in the future.
    #[test]
    fn stamp_round_trip() {
        let mut payload = vec![0u8; PAYLOAD_LENGTH_MIN];
        stamp(&mut payload, PHASE_LATENCY);
        let (phase, sent) = read_stamp(&payload).unwrap();
        assert_eq!(phase, PHASE_LATENCY);
        assert!(sent <= now_ns());
        assert_eq!(read_stamp(&payload[..8]), None);
    }
}
