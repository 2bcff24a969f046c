//! The shard runtime: the I/O glue that runs one sans-I/O [`Relay`](runnel_core::relay::Relay) on
//! one pinned core, with its own UDP socket and its own io_uring.
//!
//! # How it works
//! [`crate::node::Node::start`] binds one UDP socket per shard (shard i on `listen` port + i,
//! so clients and neighbors steer each stream part to its owning shard with
//! [`crate::config::shard_of`]) and starts one glommio `LocalExecutor` per shard, pinned to a
//! core. Inside it the shard owns everything it touches — socket, relay, buffers — and never
//! locks. Its loop:
//!
//! 1. Receive: one multishot `RecvMsg` SQE on a provided-buffer ring of
//!    [`RECEIVE_BUFFER_COUNT`] buffers of 64 KiB, with `UDP_GRO` on the socket, so one
//!    completion carries up to 64 KiB of same-size datagrams coalesced by the kernel. Each
//!    payload goes to `relay.handle_receive` whole (the relay splits it by each datagram's
//!    `total_length`); the buffer goes back to the ring; the receive is re-armed when the
//!    kernel ends it (e.g. `ENOBUFS` when every buffer was in use).
//! 2. After each batch of completions: `relay.handle_timeout` if due, `relay.flush`, then
//!    `relay.poll_gather` into up to [`SEND_SLOTS`] send slots, each one scatter-gather
//!    `SendMsg` SQE (per datagram its stamped header and its shared body) with a
//!    `UDP_SEGMENT` cmsg when it holds several datagrams (GSO), submitted together.
//! 3. Wait for completions with a timeout of `relay.poll_timeout()`, capped at
//!    [`WAIT_TIMEOUT_US_MAX`] so that commands and stop requests are seen.
//!
//! glommio 0.9 exposes neither multishot receive, provided-buffer rings nor `UDP_SEGMENT`, so
//! the shard runs its own io_uring inside the glommio executor thread: glommio gives the
//! pinned thread-per-core executor and the task structure, the shard's ring gives the I/O
//! (docs/decisions-shards.md says why and what it costs).
//!
//! Counters are published after every loop turn into per-shard atomics
//! ([`SharedCounters`]) that the node handle reads without asking the shard. Commands (links,
//! joins, leaves, filter updates: [`crate::command`]) come from the policy thread over a
//! bounded channel per shard and are acknowledged over one bounded channel sized so that it
//! cannot fill; events (signature failures, joins) leave over one bounded channel shared by
//! all shards, and drops are counted.
//!
//! # Limits
//! - Linux ≥ 6.0 (multishot recvmsg); `UDP_GRO`/`UDP_SEGMENT` need ≥ 5.0.
//! - A command or stop request waits up to [`WAIT_TIMEOUT_US_MAX`] on an idle shard.
//! - If the kernel rejects a GSO send (`EIO`/`EINVAL`, e.g. a device without checksum
//!   offload), the shard stops using GSO and sends one datagram per `sendmsg` from then on,
//!   counting [`RuntimeCounter::GsoFallbacks`].
//! - Receive memory per shard is [`RECEIVE_BUFFER_COUNT`] × 64 KiB (not locked); the socket's
//!   receive buffer is raised to [`SOCKET_RECEIVE_BUFFER_LENGTH`] within `net.core.rmem_max`.

mod buffers;
pub(crate) mod runtime;

use crate::command::{Command, CommandError, CommandId};
use runnel_core::counters::{Counter, Counters};
use runnel_core::filter::FilterUpdate;
use runnel_core::relay::{Event, LinkTraffic};
use std::sync::atomic::{AtomicU64, Ordering};

/// Receive buffers per shard (a power of two); each holds one GRO-coalesced receive.
pub const RECEIVE_BUFFER_COUNT: u16 = 64;
/// Sends in flight per shard; when all are in flight the shard waits for one to complete.
pub const SEND_SLOTS: usize = 64;
/// Longest the shard sleeps in the kernel before looking at commands and timers again.
pub const WAIT_TIMEOUT_US_MAX: u64 = 5_000;
/// `SO_RCVBUF` the shard asks for (`SO_RCVBUFFORCE` as root; otherwise the kernel caps it at
/// `net.core.rmem_max`). It holds the credit window a shard grants each sender (2048
/// datagrams) with room to spare.
pub const SOCKET_RECEIVE_BUFFER_LENGTH: usize = 8 << 20;
/// Commands that may wait for one shard.
pub const COMMAND_QUEUE_LENGTH_MAX: usize = 1024;
/// Events that may wait for the node handle's reader, all shards together.
pub const EVENT_QUEUE_LENGTH_MAX: usize = 4096;

/// What the runtime itself counts, beside the relay's [`Counter`]s. Ids are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RuntimeCounter {
    /// Receive completions that carried data (one per GRO-coalesced buffer).
    ReceiveCompletions = 0,
    /// UDP payload bytes received.
    ReceiveBytes = 1,
    /// Receives dropped because the payload, name or header did not fit the buffer.
    ReceivesTruncated = 2,
    /// Times the multishot receive ended and was armed again.
    ReceiveRearms = 3,
    /// Times the kernel found no free receive buffer (`ENOBUFS`); datagrams queue in the socket.
    ReceiveBuffersExhausted = 4,
    /// Receives that failed with another error.
    ReceiveErrors = 5,
    /// SendMsg completions.
    SendCompletions = 6,
    /// Times the transmit drain waited because all [`SEND_SLOTS`] were in flight.
    SendSlotsFull = 7,
    /// GSO sends the kernel rejected; after the first the shard sends without GSO.
    GsoFallbacks = 8,
    /// Relay events dropped because the node's event queue was full.
    EventsDropped = 9,
    /// Commands handled (links, joins, leaves, filter updates).
    CommandsHandled = 10,
    /// Turns of the shard loop.
    LoopTurns = 11,
}

impl RuntimeCounter {
    /// All runtime counters in id order.
    pub const ALL: [RuntimeCounter; 12] = [
        RuntimeCounter::ReceiveCompletions,
        RuntimeCounter::ReceiveBytes,
        RuntimeCounter::ReceivesTruncated,
        RuntimeCounter::ReceiveRearms,
        RuntimeCounter::ReceiveBuffersExhausted,
        RuntimeCounter::ReceiveErrors,
        RuntimeCounter::SendCompletions,
        RuntimeCounter::SendSlotsFull,
        RuntimeCounter::GsoFallbacks,
        RuntimeCounter::EventsDropped,
        RuntimeCounter::CommandsHandled,
        RuntimeCounter::LoopTurns,
    ];

    /// The Prometheus metric name (without the `runnel_shard_` prefix and `_total` suffix).
    pub fn name(self) -> &'static str {
        match self {
            RuntimeCounter::ReceiveCompletions => "receive_completions",
            RuntimeCounter::ReceiveBytes => "receive_bytes",
            RuntimeCounter::ReceivesTruncated => "receives_truncated",
            RuntimeCounter::ReceiveRearms => "receive_rearms",
            RuntimeCounter::ReceiveBuffersExhausted => "receive_buffers_exhausted",
            RuntimeCounter::ReceiveErrors => "receive_errors",
            RuntimeCounter::SendCompletions => "send_completions",
            RuntimeCounter::SendSlotsFull => "send_slots_full",
            RuntimeCounter::GsoFallbacks => "gso_fallbacks",
            RuntimeCounter::EventsDropped => "events_dropped",
            RuntimeCounter::CommandsHandled => "commands_handled",
            RuntimeCounter::LoopTurns => "loop_turns",
        }
    }
}

/// One shard's runtime counter values, indexed by [`RuntimeCounter`] id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeCounters {
    values: [u64; RuntimeCounter::ALL.len()],
}

impl RuntimeCounters {
    #[inline]
    pub fn add(&mut self, counter: RuntimeCounter, amount: u64) {
        self.values[counter as usize] += amount;
    }

    #[inline]
    pub fn increment(&mut self, counter: RuntimeCounter) {
        self.add(counter, 1);
    }

    pub fn get(&self, counter: RuntimeCounter) -> u64 {
        self.values[counter as usize]
    }

    /// Prometheus text, one `runnel_shard_<name>_total{shard="i"}` line per counter.
    pub fn write_prometheus(&self, shard: usize, out: &mut String) {
        use std::fmt::Write;
        for counter in RuntimeCounter::ALL {
            let _ = writeln!(out, "runnel_shard_{}_total{{shard=\"{shard}\"}} {}", counter.name(), self.get(counter));
        }
    }
}

/// A relay event, tagged with the shard that raised it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardEvent {
    pub shard: u16,
    pub event: Event,
}

/// What the policy thread (the node's conductor, the only sender) asks of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ShardCommand {
    /// A command with an id: the shard applies it and answers with a [`ShardAck`].
    Apply { id: CommandId, command: Command },
    /// A quarantine from the policy thread itself, for the shard's filter (no answer).
    Filter(FilterUpdate),
    /// Forget expired quarantines.
    ExpireFilter,
}

/// A shard's answer to [`ShardCommand::Apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShardAck {
    pub(crate) id: CommandId,
    pub(crate) result: Result<(), CommandError>,
}

/// One shard's counters as last published by the shard: written by the shard after each loop
/// turn (relaxed stores), read by the node handle at any time. A snapshot is consistent per
/// counter, not across counters.
pub(crate) struct SharedCounters {
    relay: [AtomicU64; Counter::ALL.len()],
    runtime: [AtomicU64; RuntimeCounter::ALL.len()],
    /// Per-link traffic, published every [`LINK_TRAFFIC_INTERVAL_US`] (not every loop turn:
    /// it is a copy of the link table).
    links: std::sync::Mutex<Vec<(u32, LinkTraffic)>>,
}

/// How often a shard publishes its per-link traffic.
pub(crate) const LINK_TRAFFIC_INTERVAL_US: u64 = 100_000;

impl SharedCounters {
    pub(crate) fn new() -> Self {
        Self {
            relay: std::array::from_fn(|_| AtomicU64::new(0)),
            runtime: std::array::from_fn(|_| AtomicU64::new(0)),
            links: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Publishes the relay's per-link traffic (the buffer is reused).
    pub(crate) fn publish_links(&self, traffic: impl Iterator<Item = (u32, LinkTraffic)>) {
        let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        links.clear();
        links.extend(traffic);
    }

    pub(crate) fn links(&self) -> Vec<(u32, LinkTraffic)> {
        self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Publishes the relay's counters plus those the runtime adds to the relay's set.
    pub(crate) fn publish(&self, relay: &Counters, runtime_relay: &Counters, runtime: &RuntimeCounters) {
        for counter in Counter::ALL {
            self.relay[counter as usize].store(relay.get(counter) + runtime_relay.get(counter), Ordering::Relaxed);
        }
        for counter in RuntimeCounter::ALL {
            self.runtime[counter as usize].store(runtime.get(counter), Ordering::Relaxed);
        }
    }

    pub(crate) fn relay(&self) -> Counters {
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            counters.add(counter, self.relay[counter as usize].load(Ordering::Relaxed));
        }
        counters
    }

    pub(crate) fn runtime(&self) -> RuntimeCounters {
        let mut counters = RuntimeCounters::default();
        for counter in RuntimeCounter::ALL {
            counters.add(counter, self.runtime[counter as usize].load(Ordering::Relaxed));
        }
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: runtime counter ids are dense and stable and their names unique.
    #[test]
    fn runtime_counter_ids_are_dense_and_names_unique() {
        for (index, counter) in RuntimeCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        let names: std::collections::HashSet<_> = RuntimeCounter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), RuntimeCounter::ALL.len());
    }
}
