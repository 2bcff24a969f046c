//! The relay core: what a shard does with datagrams, without doing any I/O.
//!
//! Modeled on quinn-proto: the caller feeds received bytes with [`Relay::handle_receive`],
//! drains datagrams to send with [`Relay::poll_transmit`], and drives timers with
//! [`Relay::poll_timeout`] / [`Relay::handle_timeout`]. Time is an argument (`now_us`,
//! microseconds on any monotonic clock), so a seeded simulation drives thousands of relays
//! deterministically and the shard runtime drives one per core.
//!
//! (Implementation in progress: API is fixed, bodies land next.)

use crate::config::{LinkConfig, VerifyPolicy};
use crate::counters::Counters;
use crate::stream::StreamPartKey;
use std::net::SocketAddr;

/// Microseconds on the caller's monotonic clock.
pub type Micros = u64;

/// Tunables of one relay (one shard). Every bound is in the name or documented.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// This shard's index; neighbors address stream parts to `peer port + shard_of(key)`.
    pub shard_index: u16,
    pub shards: u16,
    pub datagram_length_max: usize,
    pub verify: VerifyPolicy,
}

/// One send: `segments` datagrams in the caller's buffer, each `segment_size` bytes except
/// possibly the last — exactly the shape of one UDP GSO send (`UDP_SEGMENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub segment_size: usize,
    pub segments: usize,
    pub length: usize,
}

/// Things the runtime must act on outside the relay (e.g. quarantine in the XDP maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A record failed signature verification.
    SignatureFailure { link_id: u32, publisher: [u8; 20] },
}

/// A shard's relay state.
pub struct Relay {
    config: RelayConfig,
    counters: Counters,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        Self { config, counters: Counters::default() }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Adds (or replaces) a link.
    pub fn add_link(&mut self, _link: &LinkConfig) {}

    /// Joins a stream part: this shard carries it and subscribes to it at its neighbors.
    pub fn join(&mut self, _now_us: Micros, _key: StreamPartKey) {}

    /// Feeds one receive buffer: one datagram, or several coalesced by GRO.
    pub fn handle_receive(&mut self, _now_us: Micros, _from: SocketAddr, _buffer: &[u8]) {
        self.counters.increment(crate::counters::Counter::DatagramsReceived);
    }

    /// Closes the datagrams being packed so they can be sent: call once per receive batch.
    pub fn flush(&mut self) {}

    /// Writes the next send into `buffer` (cleared first).
    pub fn poll_transmit(&mut self, _buffer: &mut Vec<u8>) -> Option<Transmit> {
        None
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Micros> {
        None
    }

    pub fn handle_timeout(&mut self, _now_us: Micros) {}

    pub fn poll_event(&mut self) -> Option<Event> {
        None
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}
