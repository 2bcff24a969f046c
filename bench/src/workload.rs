//! The fan-out workload, run the same way against every system: one publisher, N subscribers.
//!
//! A [`System`] is something that routes messages from a publisher to subscribers (a Runnel
//! node, a `nats-server`); it hands out one [`Publisher`] and N [`Subscriber`]s. [`measure`]
//! then runs the phases documented in `bench/README.md`:
//!
//! 1. **Readiness**: the publisher sends a probe every 10 ms until every subscriber has
//!    received one (bounded), so subscriptions are in place before any clock starts.
//! 2. **Throughput**: the publisher sends as fast as it can for `duration`, in batches of
//!    `batch_messages` with one flush (one `write`, one GSO send) per batch. Delivered msgs/s
//!    = messages all subscribers received inside that window / window; publish msgs/s = sent
//!    / window. The server's CPU% and RSS are sampled at the window's edges.
//! 3. **Drain**: wait until subscriber counts stop moving (300 ms quiet, at most 10 s); what
//!    arrived by then versus what was sent × N is the delivered fraction (loss shows here).
//! 4. **Latency**: the publisher sends at a fixed `latency_rate_per_s`, flushing every message,
//!    stamping each with its send time; every subscriber samples receive − send time.
//!
//! Subscribers run on their own threads and publish their count to an atomic once per
//! receive call (not per message). Limits: publisher and subscribers share this machine's
//! cores with the server, as in any loopback benchmark; the numbers are for comparing
//! systems under the same conditions, not absolute capacity.

use crate::measure::{self, LatencySamples, LatencySummary, Pacer};
use crate::process;
use crate::BenchError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sending side of a system under test.
pub trait Publisher {
    /// Queues one message; may buffer until [`Publisher::flush`].
    fn publish(&mut self, payload: &[u8]) -> Result<(), BenchError>;
    /// Sends everything queued.
    fn flush(&mut self) -> Result<(), BenchError>;
}

/// The receiving side of a system under test; runs on its own thread.
pub trait Subscriber: Send + 'static {
    /// Waits at most about `wait` for data and calls `on_message` with the payload of every
    /// whole message that arrived. Returns `Ok` on a timeout too.
    fn receive(&mut self, wait: Duration, on_message: &mut dyn FnMut(&[u8])) -> Result<(), BenchError>;
}

/// A running system under test.
pub trait System {
    type Publisher: Publisher;
    type Subscriber: Subscriber;
    /// The server processes whose CPU and memory are this system's cost.
    fn server_pids(&self) -> Vec<u32>;
    /// Fails (with the server's log) if a server process has died.
    fn check_running(&mut self) -> Result<(), BenchError>;
    fn publisher(&mut self) -> Result<Self::Publisher, BenchError>;
    fn subscriber(&mut self, index: usize) -> Result<Self::Subscriber, BenchError>;
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Workload {
    pub subscribers: usize,
    pub payload_length: usize,
    pub duration: Duration,
    pub latency_duration: Duration,
    pub latency_rate_per_s: u64,
    /// Messages per flush in the throughput phase.
    pub batch_messages: usize,
    /// Latency samples kept per subscriber.
    pub samples_max: usize,
}

/// What one system did under the workload.
#[derive(Clone, Debug, Default)]
pub struct SystemResult {
    pub published_per_s: f64,
    pub delivered_per_s: f64,
    pub sent: u64,
    pub delivered: u64,
    /// (delivered by the end of the drain) / (sent × subscribers), throughput phase.
    pub delivered_fraction: f64,
    pub latency: LatencySummary,
    /// (delivered) / (sent × subscribers) in the latency phase.
    pub latency_delivered_fraction: f64,
    /// Server CPU over the throughput window, percent of one core (summed over processes).
    pub cpu_percent: f64,
    /// Server resident memory at the end of the throughput window (summed over processes).
    pub rss_kib: u64,
    /// Subscribers that failed (for example disconnected as slow consumers), with the reason.
    pub subscriber_errors: Vec<String>,
    /// Latency samples dropped because a subscriber's sample set was full.
    pub samples_dropped: u64,
}

/// Messages one subscriber received, per phase (indexed by the payload's phase byte), on
/// their own cache line.
#[repr(align(64))]
#[derive(Default)]
struct PhaseCounters([AtomicU64; 3]);

impl PhaseCounters {
    fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

struct Shared {
    received: Vec<PhaseCounters>,
    stop: AtomicBool,
}

impl Shared {
    /// Messages of every phase, all subscribers.
    fn total(&self) -> u64 {
        self.received.iter().map(PhaseCounters::total).sum()
    }

    /// Messages of one phase, all subscribers.
    fn phase_total(&self, phase: u8) -> u64 {
        self.received.iter().map(|c| c.0[phase as usize].load(Ordering::Relaxed)).sum()
    }
}

const READINESS_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const RECEIVE_WAIT: Duration = Duration::from_millis(50);

/// Runs the workload against `system` and reports what it did.
pub fn measure<S: System>(system: &mut S, workload: &Workload) -> Result<SystemResult, BenchError> {
    if workload.payload_length < measure::PAYLOAD_LENGTH_MIN {
        return Err(BenchError::new(format!(
            "payload size {} is too small: use at least {} bytes",
            workload.payload_length,
            measure::PAYLOAD_LENGTH_MIN
        )));
    }
    let shared =
        Arc::new(Shared { received: (0..workload.subscribers).map(|_| PhaseCounters::default()).collect(), stop: AtomicBool::new(false) });
    let mut threads = Vec::with_capacity(workload.subscribers);
    let mut run = || -> Result<SystemResult, BenchError> {
        for index in 0..workload.subscribers {
            let subscriber = system.subscriber(index)?;
            let shared = Arc::clone(&shared);
            let samples_max = workload.samples_max;
            let thread = std::thread::Builder::new()
                .name(format!("subscriber-{index}"))
                .spawn(move || subscriber_loop(subscriber, index, &shared, samples_max))
                .map_err(|e| BenchError::new(format!("cannot start a subscriber thread: {e}")))?;
            threads.push(thread);
        }
        let mut publisher = system.publisher()?;
        measure::precise_sleeps();
        let mut payload = vec![0u8; workload.payload_length];

        // 1. Readiness.
        let ready_deadline = Instant::now() + READINESS_TIMEOUT;
        while shared.received.iter().any(|c| c.total() == 0) {
            if Instant::now() > ready_deadline {
                system.check_running()?;
                let silent = shared.received.iter().filter(|c| c.total() == 0).count();
                return Err(BenchError::new(format!(
                    "{silent} of {} subscribers received nothing within {READINESS_TIMEOUT:?}",
                    workload.subscribers
                )));
            }
            measure::stamp(&mut payload, measure::PHASE_PROBE);
            publisher.publish(&payload)?;
            publisher.flush()?;
            std::thread::sleep(Duration::from_millis(10));
        }
        drain(&shared);

        // 2. Throughput.
        let pids = system.server_pids();
        let mut result = SystemResult::default();
        payload.fill(0);
        payload[8] = measure::PHASE_THROUGHPUT;
        let batch = workload.batch_messages.max(1);
        let before = process::sample_all(&pids)?;
        let received_before = shared.phase_total(measure::PHASE_THROUGHPUT);
        let start = Instant::now();
        let deadline = start + workload.duration;
        let mut sent = 0u64;
        loop {
            for _ in 0..batch {
                publisher.publish(&payload)?;
            }
            publisher.flush()?;
            sent += batch as u64;
            if Instant::now() >= deadline {
                break;
            }
        }
        let window_s = start.elapsed().as_secs_f64();
        let received_in_window = shared.phase_total(measure::PHASE_THROUGHPUT) - received_before;
        let after = process::sample_all(&pids)?;
        (result.cpu_percent, result.rss_kib) = process::cpu_and_rss(&before, &after);
        result.sent = sent;
        result.delivered = received_in_window;
        result.published_per_s = sent as f64 / window_s;
        result.delivered_per_s = received_in_window as f64 / window_s;

        // 3. Drain.
        drain(&shared);
        let expected = sent * workload.subscribers as u64;
        result.delivered_fraction = (shared.phase_total(measure::PHASE_THROUGHPUT) - received_before) as f64 / expected.max(1) as f64;
        system.check_running()?;

        // 4. Latency. Throughput-phase stragglers may still arrive; only phase-1 messages
        // are sampled and counted here.
        let pacer = Pacer::new(workload.latency_rate_per_s);
        let mut sent = 0u64;
        while latency_phase_running(&pacer, workload) {
            let due = pacer.due();
            while sent < due {
                measure::stamp(&mut payload, measure::PHASE_LATENCY);
                publisher.publish(&payload)?;
                publisher.flush()?;
                sent += 1;
            }
            pacer.wait_for(sent);
        }
        drain(&shared);
        let expected = sent * workload.subscribers as u64;
        result.latency_delivered_fraction = shared.phase_total(measure::PHASE_LATENCY) as f64 / expected.max(1) as f64;
        system.check_running()?;
        Ok(result)
    };
    let outcome = run();
    shared.stop.store(true, Ordering::Relaxed);
    let mut sample_sets = Vec::with_capacity(threads.len());
    let mut errors = Vec::new();
    for thread in threads {
        match thread.join() {
            Ok((samples, error)) => {
                sample_sets.push(samples);
                errors.extend(error);
            }
            Err(_) => errors.push("a subscriber thread panicked".to_string()),
        }
    }
    let mut result = outcome?;
    result.samples_dropped = sample_sets.iter().map(|set| set.dropped).sum();
    result.latency = LatencySummary::from_samples(sample_sets);
    result.subscriber_errors = errors;
    Ok(result)
}

/// Whether the paced phase still has messages to send.
fn latency_phase_running(pacer: &Pacer, workload: &Workload) -> bool {
    let total = workload.latency_duration.as_nanos() * workload.latency_rate_per_s as u128 / 1_000_000_000;
    (pacer.due() as u128) < total
}

/// Waits until subscriber counts have not moved for [`DRAIN_QUIET`] (at most [`DRAIN_TIMEOUT`]).
fn drain(shared: &Shared) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = shared.total();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now_total = shared.total();
        if now_total != last {
            last = now_total;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= DRAIN_QUIET {
            return;
        }
    }
}

fn subscriber_loop<S: Subscriber>(
    mut subscriber: S,
    index: usize,
    shared: &Shared,
    samples_max: usize,
) -> (LatencySamples, Option<String>) {
    let mut samples = LatencySamples::new(samples_max);
    let mut counts = [0u64; 3];
    while !shared.stop.load(Ordering::Relaxed) {
        let outcome = subscriber.receive(RECEIVE_WAIT, &mut |payload| {
            match measure::read_stamp(payload) {
                Some((measure::PHASE_LATENCY, sent_ns)) => {
                    counts[measure::PHASE_LATENCY as usize] += 1;
                    samples.record(measure::now_ns().saturating_sub(sent_ns));
                }
                Some((measure::PHASE_THROUGHPUT, _)) => counts[measure::PHASE_THROUGHPUT as usize] += 1,
                // Probes, and anything too short or unknown to be ours.
                _ => counts[measure::PHASE_PROBE as usize] += 1,
            }
        });
        for (counter, count) in shared.received[index].0.iter().zip(counts) {
            counter.store(count, Ordering::Relaxed);
        }
        if let Err(error) = outcome {
            return (samples, Some(format!("subscriber {index}: {error}")));
        }
    }
    (samples, None)
}
