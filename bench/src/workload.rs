//! The fan-out workload, run the same way against every system: one publisher, N subscribers.
//!
//! A [`System`] is something that routes messages from a publisher to subscribers (a Runnel
//! node, a `nats-server`); it hands out one [`Publisher`] and N [`Subscriber`]s. [`measure`]
//! then runs the phases documented in `bench/README.md`:
//!
//! 1. **Readiness**: the publisher sends a probe every 10 ms until every subscriber has
//!    received one (bounded), so subscriptions are in place before any clock starts.
//! 2. **Throughput search** (RFC 2544 style), within `duration` split into
//!    1 + [`SEARCH_STEPS`] equal windows: an *unpaced probe* (the publisher sends as fast as it
//!    can, one flush per `batch_messages`) gives an upper bound (its publish rate) and a first
//!    guess (its delivered rate per subscriber); then up to [`SEARCH_STEPS`] *paced* steps
//!    bisect for the highest publish rate at which subscribers receive at least
//!    [`DELIVERED_FRACTION_MIN`] of what was sent (× N). Each step ends with a drain (counts
//!    still for [`STEP_DRAIN_QUIET`], at most [`STEP_DRAIN_TIMEOUT`]); its messages carry their
//!    own phase byte, so stragglers never count for another step, and its own publisher, so
//!    one step's unrepaired gaps do not hold back the next one's messages; after the drain
//!    the search waits until the servers are idle ([`SETTLE_CPU_PERCENT_MAX`]), so no step
//!    inherits the previous one's backlog. If the probe already
//!    delivers enough (NATS: TCP slows its publisher down), the search stops there.
//!    Reported: delivered msgs/s = messages of the best passing step received (in its window
//!    or its drain) / window, its publish rate, its server CPU% and RSS, and the probe's
//!    numbers; the in-window-only rate too.
//! 3. **Latency**: the publisher sends at a fixed rate ([`Paced`]), flushing at most every
//!    [`LATENCY_FLUSH_INTERVAL`], stamping each message with its send time; every subscriber
//!    samples receive − send time.
//!
//! [`measure_latency`] (`runnel bench latency`) runs readiness, a warm-up and the same latency
//! phase with one subscriber and a flush after every message: the paced sending and the
//! sampling are the same code.
//!
//! Subscribers run on their own threads and publish their counts to atomics once per
//! receive call (not per message). Limits: publisher and subscribers share this machine's
//! cores with the server, as in any loopback benchmark, so a publisher that cannot reach a
//! paced rate sends what it can (the measured publish rate says so); the numbers are for
//! comparing systems under the same conditions, not absolute capacity. A step of well under a
//! second hides slow build-ups (queues that overflow only after seconds).

use crate::measure::{self, LatencySamples, LatencySummary, Pacer};
use crate::process;
use crate::BenchError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often publishers flush in the fan-out and relay-chain latency phases (both systems
/// alike): a batch-signing publisher signs one root per flush (as `runnel dev` and `runnel
/// pub` do), and the NATS client writes its buffer on the same schedule.
pub const LATENCY_FLUSH_INTERVAL: Duration = Duration::from_millis(1);

/// When a paced phase's publisher flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// At most once per interval, and at the end of the phase.
    Interval(Duration),
    /// After every message: each system's lowest-latency mode (`runnel bench latency`), in
    /// which no buffer or batch holds a message back.
    EveryMessage,
}

/// A paced phase: `rate_per_s` for `duration`.
#[derive(Clone, Copy, Debug)]
pub struct Paced {
    pub rate_per_s: u64,
    pub duration: Duration,
    pub flush: Flush,
}

/// The sending side of a system under test.
pub trait Publisher {
    /// Queues one message; may buffer until [`Publisher::flush`].
    fn publish(&mut self, payload: &[u8]) -> Result<(), BenchError>;
    /// Sends everything queued.
    fn flush(&mut self) -> Result<(), BenchError>;
    /// Upkeep while not publishing (a Runnel publisher answers repair requests); called every
    /// few ms during drains. Nothing to do by default.
    fn poll(&mut self) -> Result<(), BenchError> {
        Ok(())
    }
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
    /// The latency phase after the search.
    pub latency: Paced,
    /// Messages per flush in the throughput phase.
    pub batch_messages: usize,
    /// Latency samples kept per subscriber.
    pub samples_max: usize,
}

/// What `runnel bench latency` runs against one system (see [`measure_latency`]).
#[derive(Clone, Debug)]
pub struct LatencyWorkload {
    pub payload_length: usize,
    /// Sending before the measured phase, at its rate and flush policy, not sampled.
    pub warmup: Duration,
    /// The measured phase.
    pub latency: Paced,
    /// Latency samples kept (extras are counted in `samples_dropped`).
    pub samples_max: usize,
}

/// What one system did in `runnel bench latency`'s measured phase.
#[derive(Clone, Debug, Default)]
pub struct LatencyResult {
    /// Receive − send time of every sampled message.
    pub latency: LatencySummary,
    /// Messages published in the measured phase.
    pub sent: u64,
    /// Sent / phase length: below the asked rate when the publisher could not keep up.
    pub published_per_s: f64,
    /// Measured-phase messages received by the end of the drain / sent.
    pub delivered_fraction: f64,
    /// Samples not kept because the sample set was full.
    pub samples_dropped: u64,
    /// The subscriber's failure, if it failed.
    pub subscriber_errors: Vec<String>,
}

/// One step of the throughput search.
#[derive(Clone, Debug, Default)]
pub struct StepResult {
    /// Paced publish rate asked for; `None` for the unpaced probe.
    pub rate_per_s: Option<f64>,
    /// Messages sent / window.
    pub published_per_s: f64,
    /// Messages of this step all subscribers received (inside the window or in the drain
    /// after it) / window: at a passing rate, what the system sustains.
    pub delivered_per_s: f64,
    /// Messages all subscribers received inside the window / window (lower than
    /// `delivered_per_s` by what was still in flight or queued when the window closed).
    pub delivered_in_window_per_s: f64,
    pub sent: u64,
    /// Received by the end of the drain, all subscribers.
    pub delivered: u64,
    /// Received by the end of the step's drain / (sent × subscribers).
    pub delivered_fraction: f64,
    /// Server CPU over the window, percent of one core (summed over processes).
    pub cpu_percent: f64,
    /// Server resident memory at the end of the window (summed over processes).
    pub rss_kib: u64,
    /// Time after the drain until the servers were idle again (see [`SETTLE_CPU_PERCENT_MAX`]).
    pub settle_ms: u64,
}

impl StepResult {
    /// Whether subscribers received enough for this rate to count as sustained.
    pub fn passed(&self) -> bool {
        self.delivered_fraction >= DELIVERED_FRACTION_MIN
    }
}

/// What one system did under the workload.
#[derive(Clone, Debug, Default)]
pub struct SystemResult {
    /// The throughput figure: delivered msgs/s (all subscribers) at the found rate, that is
    /// in the highest passing search step (the probe if it passed); all the step fields below
    /// are zero if no step passed.
    pub delivered_per_s: f64,
    /// Measured publish rate of that step (the found rate).
    pub published_per_s: f64,
    /// The paced rate that step asked for; `None` if the unpaced probe passed.
    pub rate_per_s: Option<f64>,
    /// Delivered msgs/s inside that step's window only (see [`StepResult`]).
    pub delivered_in_window_per_s: f64,
    pub sent: u64,
    pub delivered: u64,
    /// (delivered by the end of the step's drain) / (sent × subscribers) in that step.
    pub delivered_fraction: f64,
    /// Server CPU over that step's window, percent of one core (summed over processes).
    pub cpu_percent: f64,
    /// Server resident memory at the end of that step's window (summed over processes).
    pub rss_kib: u64,
    /// The unpaced probe: overload behaviour.
    pub probe: StepResult,
    /// Every step in the order run, the probe first.
    pub steps: Vec<StepResult>,
    pub latency: LatencySummary,
    /// (delivered) / (sent × subscribers) in the latency phase.
    pub latency_delivered_fraction: f64,
    /// Subscribers that failed (for example disconnected as slow consumers), with the reason.
    pub subscriber_errors: Vec<String>,
    /// Latency samples dropped because a subscriber's sample set was full.
    pub samples_dropped: u64,
}

/// Messages one subscriber received, per phase (indexed by the payload's phase byte), on
/// their own cache line.
#[repr(align(64))]
#[derive(Default)]
struct PhaseCounters([AtomicU64; measure::PHASES]);

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
/// How often a drain services the publisher and looks at the counts.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Paced steps of the throughput search after the unpaced probe.
pub const SEARCH_STEPS: usize = 6;
/// A rate passes when subscribers receive at least this fraction of what was sent (× N).
pub const DELIVERED_FRACTION_MIN: f64 = 0.99;
/// The search stops once the passing and failing rates are this close (relative).
const SEARCH_RESOLUTION: f64 = 0.02;
/// The first paced step tries at least the probe's publish rate divided by this.
const FIRST_GUESS_DIVISOR_MAX: f64 = 16.0;
/// Lowest paced rate tried.
const SEARCH_RATE_MIN_PER_S: f64 = 100.0;
/// Drain after each search step: counts still for this long, at most the timeout.
pub const STEP_DRAIN_QUIET: Duration = Duration::from_millis(200);
pub const STEP_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// After each step, servers count as idle below this CPU (percent of one core, summed) over
/// one [`SETTLE_INTERVAL`]; the wait ends after [`SETTLE_TIMEOUT`] regardless.
pub const SETTLE_CPU_PERCENT_MAX: f64 = 10.0;
pub const SETTLE_INTERVAL: Duration = Duration::from_millis(200);
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const RECEIVE_WAIT: Duration = Duration::from_millis(50);

/// Runs the workload against `system` and reports what it did.
pub fn measure<S: System>(system: &mut S, workload: &Workload) -> Result<SystemResult, BenchError> {
    let mut payload = payload_buffer(workload.payload_length)?;
    let (mut result, received) = with_subscribers(system, workload.subscribers, workload.samples_max, |system, shared| {
        let mut publisher = system.publisher()?;
        await_readiness(system, shared, &mut publisher, &mut payload)?;
        let mut result = search_throughput(system, shared, workload, &mut payload)?;
        // 3. Latency, with a fresh publisher (see `Search::step`). Throughput-phase
        // stragglers may still arrive; only latency-phase messages are sampled and counted.
        drop(publisher);
        let mut publisher = system.publisher()?;
        result.latency_delivered_fraction = latency_phase(shared, &mut publisher, &mut payload, workload.latency)?.delivered_fraction;
        system.check_running()?;
        Ok(result)
    })?;
    result.samples_dropped = received.samples_dropped;
    result.latency = received.latency;
    result.subscriber_errors = received.errors;
    Ok(result)
}

/// Runs `runnel bench latency` against `system` with one subscriber: readiness, a warm-up at
/// the measured rate and flush policy whose messages are not sampled (so the first samples
/// do not pay for cold caches, socket buffers growing or a node learning the publisher's
/// key), then the latency phase — one publisher throughout, as a real low-latency publisher
/// keeps its connection.
pub fn measure_latency<S: System>(system: &mut S, workload: &LatencyWorkload) -> Result<LatencyResult, BenchError> {
    let mut payload = payload_buffer(workload.payload_length)?;
    let (phase, received) = with_subscribers(system, 1, workload.samples_max, |system, shared| {
        let mut publisher = system.publisher()?;
        await_readiness(system, shared, &mut publisher, &mut payload)?;
        let warmup = Paced { duration: workload.warmup, ..workload.latency };
        paced(&mut publisher, &mut payload, warmup, measure::PHASE_READINESS)?;
        let phase = latency_phase(shared, &mut publisher, &mut payload, workload.latency)?;
        system.check_running()?;
        Ok(phase)
    })?;
    Ok(LatencyResult {
        latency: received.latency,
        sent: phase.sent,
        published_per_s: phase.published_per_s,
        delivered_fraction: phase.delivered_fraction,
        samples_dropped: received.samples_dropped,
        subscriber_errors: received.errors,
    })
}

/// A zeroed payload of `payload_length` bytes, if that holds a stamp.
fn payload_buffer(payload_length: usize) -> Result<Vec<u8>, BenchError> {
    if payload_length < measure::PAYLOAD_LENGTH_MIN {
        return Err(BenchError::new(format!(
            "payload size {payload_length} is too small: use at least {} bytes",
            measure::PAYLOAD_LENGTH_MIN
        )));
    }
    Ok(vec![0u8; payload_length])
}

/// What the subscriber threads saw over a whole run.
struct Received {
    latency: LatencySummary,
    samples_dropped: u64,
    errors: Vec<String>,
}

/// Starts one receiving thread per subscriber, runs `run` on this thread (the publisher's,
/// with precise sleeps), then stops and joins the subscribers — also when `run` fails — and
/// merges their latency samples.
fn with_subscribers<S: System, T>(
    system: &mut S,
    subscribers: usize,
    samples_max: usize,
    run: impl FnOnce(&mut S, &Shared) -> Result<T, BenchError>,
) -> Result<(T, Received), BenchError> {
    let shared = Arc::new(Shared { received: (0..subscribers).map(|_| PhaseCounters::default()).collect(), stop: AtomicBool::new(false) });
    let mut threads = Vec::with_capacity(subscribers);
    let mut spawn_all = || -> Result<(), BenchError> {
        for index in 0..subscribers {
            let subscriber = system.subscriber(index)?;
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("subscriber-{index}"))
                .spawn(move || subscriber_loop(subscriber, index, &shared, samples_max))
                .map_err(|e| BenchError::new(format!("cannot start a subscriber thread: {e}")))?;
            threads.push(thread);
        }
        Ok(())
    };
    let outcome = spawn_all().and_then(|()| {
        measure::precise_sleeps();
        run(system, &shared)
    });
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
    let samples_dropped = sample_sets.iter().map(|set| set.dropped).sum();
    Ok((outcome?, Received { latency: LatencySummary::from_samples(sample_sets), samples_dropped, errors }))
}

/// 1. Readiness: probes every 10 ms until every subscriber has received one, then drains.
fn await_readiness<S: System>(system: &mut S, shared: &Shared, publisher: &mut S::Publisher, payload: &mut [u8]) -> Result<(), BenchError> {
    let ready_deadline = Instant::now() + READINESS_TIMEOUT;
    while shared.received.iter().any(|c| c.total() == 0) {
        if Instant::now() > ready_deadline {
            system.check_running()?;
            let silent = shared.received.iter().filter(|c| c.total() == 0).count();
            return Err(BenchError::new(format!(
                "{silent} of {} subscribers received nothing within {READINESS_TIMEOUT:?}",
                shared.received.len()
            )));
        }
        measure::stamp(payload, measure::PHASE_READINESS);
        publisher.publish(payload)?;
        publisher.flush()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    drain(shared, DRAIN_QUIET, DRAIN_TIMEOUT, publisher)
}

/// 2. Throughput search: every step, and the best passing one's numbers as the result.
fn search_throughput<S: System>(
    system: &mut S,
    shared: &Shared,
    workload: &Workload,
    payload: &mut Vec<u8>,
) -> Result<SystemResult, BenchError> {
    let mut result = SystemResult::default();
    let mut search = Search { system: &mut *system, shared, workload, payload };
    result.steps = search.run()?;
    result.probe = result.steps[0].clone();
    let found = best_step(&result.steps).cloned().unwrap_or_default();
    result.delivered_per_s = found.delivered_per_s;
    result.published_per_s = found.published_per_s;
    result.rate_per_s = found.rate_per_s;
    result.delivered_in_window_per_s = found.delivered_in_window_per_s;
    result.sent = found.sent;
    result.delivered = found.delivered;
    result.delivered_fraction = found.delivered_fraction;
    result.cpu_percent = found.cpu_percent;
    result.rss_kib = found.rss_kib;
    system.check_running()?;
    Ok(result)
}

/// What a latency phase sent and how much of it arrived.
struct LatencyPhase {
    sent: u64,
    published_per_s: f64,
    /// Latency-phase messages received by the end of the drain / (sent × subscribers).
    delivered_fraction: f64,
}

/// The latency phase: `phase` with every message stamped [`measure::PHASE_LATENCY`] (the
/// only ones subscribers sample), then a drain.
fn latency_phase(shared: &Shared, publisher: &mut impl Publisher, payload: &mut [u8], phase: Paced) -> Result<LatencyPhase, BenchError> {
    let (sent, elapsed) = paced(publisher, payload, phase, measure::PHASE_LATENCY)?;
    drain(shared, DRAIN_QUIET, DRAIN_TIMEOUT, publisher)?;
    let expected = sent * shared.received.len() as u64;
    Ok(LatencyPhase {
        sent,
        published_per_s: sent as f64 / elapsed.as_secs_f64().max(1e-9),
        delivered_fraction: shared.phase_total(measure::PHASE_LATENCY) as f64 / expected.max(1) as f64,
    })
}

/// Publishes `phase.rate_per_s × phase.duration` messages on the pacer's schedule, each
/// stamped with `phase_byte` and the time just before it is published (catch-up sends if a
/// wakeup is late), flushing as `phase.flush` says and once at the end. Returns the messages
/// sent and the time taken.
fn paced(publisher: &mut impl Publisher, payload: &mut [u8], phase: Paced, phase_byte: u8) -> Result<(u64, Duration), BenchError> {
    let total = (phase.duration.as_nanos() * phase.rate_per_s as u128 / 1_000_000_000) as u64;
    let start = Instant::now();
    let pacer = Pacer::new(phase.rate_per_s);
    let mut sent = 0u64;
    let mut last_flush = Instant::now();
    while sent < total {
        let due = pacer.due().min(total);
        while sent < due {
            measure::stamp(payload, phase_byte);
            publisher.publish(payload)?;
            sent += 1;
            if phase.flush == Flush::EveryMessage {
                publisher.flush()?;
            }
        }
        if let Flush::Interval(interval) = phase.flush {
            if last_flush.elapsed() >= interval {
                publisher.flush()?;
                last_flush = Instant::now();
            }
        }
        pacer.wait_for(sent);
    }
    publisher.flush()?;
    Ok((sent, start.elapsed()))
}

/// The highest-passing step: the probe if it passed, else the passing paced step with the
/// highest measured publish rate.
pub fn best_step(steps: &[StepResult]) -> Option<&StepResult> {
    steps.iter().filter(|step| step.passed()).max_by(|a, b| a.published_per_s.total_cmp(&b.published_per_s))
}

/// The throughput search's state: what it drives and where it counts.
struct Search<'a, S: System> {
    system: &'a mut S,
    shared: &'a Shared,
    workload: &'a Workload,
    payload: &'a mut Vec<u8>,
}

impl<S: System> Search<'_, S> {
    /// Runs the unpaced probe, then bisects with paced steps; returns every step, probe first.
    fn run(&mut self) -> Result<Vec<StepResult>, BenchError> {
        let mut steps = Vec::with_capacity(1 + SEARCH_STEPS);
        let probe = self.step(0, None)?;
        let probe_passed = probe.passed();
        // The probe's publish rate failed; its delivered rate per subscriber is the first guess.
        let mut failing_per_s = probe.published_per_s;
        let mut passing_per_s = 0.0f64;
        // Under overload a system can deliver next to nothing (all lost or held for repair),
        // so the first guess is at least 1/16 of the probe's rate.
        let mut next_per_s =
            (probe.delivered_per_s / self.workload.subscribers as f64).max(failing_per_s / FIRST_GUESS_DIVISOR_MAX).min(failing_per_s);
        steps.push(probe);
        if probe_passed {
            return Ok(steps);
        }
        for index in 1..=SEARCH_STEPS {
            if next_per_s < SEARCH_RATE_MIN_PER_S {
                break;
            }
            let step = self.step(index, Some(next_per_s))?;
            if step.passed() {
                passing_per_s = next_per_s;
            } else {
                failing_per_s = next_per_s;
            }
            steps.push(step);
            if failing_per_s - passing_per_s <= failing_per_s * SEARCH_RESOLUTION {
                break;
            }
            next_per_s = (passing_per_s + failing_per_s) / 2.0;
        }
        Ok(steps)
    }

    /// One step: publish for one window (paced at `rate_per_s`, or flat out), then drain.
    ///
    /// Every step has its own publisher (for Runnel a new publisher key, so a new chain; for
    /// NATS a new connection): an overloaded step leaves a Runnel node with gaps it waits to
    /// have repaired, and with the same chain that wait would hold back the next steps'
    /// messages too, failing rates the node sustains when it starts clean.
    fn step(&mut self, index: usize, rate_per_s: Option<f64>) -> Result<StepResult, BenchError> {
        let mut publisher = self.system.publisher()?;
        let phase = measure::PHASE_THROUGHPUT_FIRST as usize + index;
        debug_assert!(phase < measure::PHASES, "search steps fit the phase counters");
        let window = self.workload.duration / (1 + SEARCH_STEPS) as u32;
        self.payload.fill(0);
        self.payload[8] = phase as u8;
        let pids = self.system.server_pids();
        let before = process::sample_all(&pids)?;
        let received_before = self.shared.phase_total(phase as u8);
        let start = Instant::now();
        let deadline = start + window;
        let batch = self.workload.batch_messages.max(1);
        let mut sent = 0u64;
        match rate_per_s {
            None => loop {
                for _ in 0..batch {
                    publisher.publish(self.payload)?;
                }
                publisher.flush()?;
                sent += batch as u64;
                if Instant::now() >= deadline {
                    break;
                }
            },
            Some(rate_per_s) => {
                // Bursts per tick: send what is due, flushing every `batch` and at the end.
                let pacer = Pacer::new(rate_per_s.round() as u64);
                while Instant::now() < deadline {
                    let due = pacer.due();
                    let mut pending = 0;
                    while sent < due {
                        publisher.publish(self.payload)?;
                        sent += 1;
                        pending += 1;
                        if pending == batch {
                            publisher.flush()?;
                            pending = 0;
                        }
                    }
                    if pending > 0 {
                        publisher.flush()?;
                    }
                    pacer.wait_for_next_tick();
                }
            }
        }
        let window_s = start.elapsed().as_secs_f64();
        let received_in_window = self.shared.phase_total(phase as u8) - received_before;
        let after = process::sample_all(&pids)?;
        let (cpu_percent, rss_kib) = process::cpu_and_rss(&before, &after);
        drain(self.shared, STEP_DRAIN_QUIET, STEP_DRAIN_TIMEOUT, &mut publisher)?;
        let expected = sent * self.workload.subscribers as u64;
        let delivered = self.shared.phase_total(phase as u8) - received_before;
        let settle_ms = settle(&pids, &mut publisher)?;
        self.system.check_running()?;
        Ok(StepResult {
            rate_per_s,
            published_per_s: sent as f64 / window_s,
            delivered_per_s: delivered as f64 / window_s,
            delivered_in_window_per_s: received_in_window as f64 / window_s,
            sent,
            delivered,
            delivered_fraction: delivered as f64 / expected.max(1) as f64,
            cpu_percent,
            rss_kib,
            settle_ms,
        })
    }
}

/// Waits until the servers are idle: CPU over [`SETTLE_INTERVAL`] below
/// [`SETTLE_CPU_PERCENT_MAX`] (summed), at most [`SETTLE_TIMEOUT`]; keeps `publisher`
/// serviced meanwhile. Returns the ms waited. An overloaded step can leave a server busy
/// (repairs, backlog of an old chain) long after deliveries stop; the next step must not
/// inherit that load.
fn settle(pids: &[u32], publisher: &mut impl Publisher) -> Result<u64, BenchError> {
    let start = Instant::now();
    while start.elapsed() < SETTLE_TIMEOUT {
        let before = process::sample_all(pids)?;
        let interval_start = Instant::now();
        while interval_start.elapsed() < SETTLE_INTERVAL {
            publisher.poll()?;
            std::thread::sleep(DRAIN_POLL_INTERVAL);
        }
        let (cpu_percent, _) = process::cpu_and_rss(&before, &process::sample_all(pids)?);
        if cpu_percent < SETTLE_CPU_PERCENT_MAX {
            break;
        }
    }
    Ok(start.elapsed().as_millis() as u64)
}

/// Waits until subscriber counts have not moved for `quiet` (at most `timeout`).
/// Keeps `publisher` serviced meanwhile (it may still have repairs to send).
fn drain(shared: &Shared, quiet: Duration, timeout: Duration, publisher: &mut impl Publisher) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    let mut last = shared.total();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        publisher.poll()?;
        std::thread::sleep(DRAIN_POLL_INTERVAL);
        let now_total = shared.total();
        if now_total != last {
            last = now_total;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            return Ok(());
        }
    }
    Ok(())
}

fn subscriber_loop<S: Subscriber>(
    mut subscriber: S,
    index: usize,
    shared: &Shared,
    samples_max: usize,
) -> (LatencySamples, Option<String>) {
    let mut samples = LatencySamples::new(samples_max);
    let mut counts = [0u64; measure::PHASES];
    while !shared.stop.load(Ordering::Relaxed) {
        let outcome = subscriber.receive(RECEIVE_WAIT, &mut |payload| {
            match measure::read_stamp(payload) {
                Some((measure::PHASE_LATENCY, sent_ns)) => {
                    counts[measure::PHASE_LATENCY as usize] += 1;
                    samples.record(measure::now_ns().saturating_sub(sent_ns));
                }
                Some((phase, _)) if (phase as usize) < measure::PHASES => counts[phase as usize] += 1,
                // Anything too short or unknown to be ours counts with the readiness probes.
                _ => counts[measure::PHASE_READINESS as usize] += 1,
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
