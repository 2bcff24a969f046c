//! The node's policy thread: the one writer of the XDP maps, the one place that turns relay
//! events into filter state for every shard, and the node's conductor, which executes the
//! commands of [`crate::command`] (`conductor.rs`).
//!
//! # How it works
//! Shards report relay events (signature failures, joins) over one bounded channel; commands
//! from outside the dataplane (links, joins, permissions: from the config now, from the
//! control process and the chain later) arrive over another and go to the conductor, and
//! the shards' acknowledgements of them over a third. For each event, the thread:
//! - `Joined { part }`: adds the stream part to the XDP `joined` map (the shard's own filter
//!   learned it when it joined);
//! - `SignatureFailure { link_id, publisher, publisher_proven }`: quarantines the link — its
//!   datagrams are authenticated by the link tag, so the link really sent the bad record — for
//!   [`QUARANTINE_FIRST_NS`], doubling with each repeat offense up to [`QUARANTINE_MAX_NS`].
//!   The publisher is quarantined too only if `publisher_proven` (the record came over a client
//!   link on which that publisher had signed correctly before); otherwise anyone could get an
//!   innocent publisher quarantined by forging records in its name.
//!
//! Every resulting update goes to every shard's command queue and into the XDP maps, so the
//! userspace and kernel filters hold the same policy. Events are then passed on to the node
//! handle's event channel. Every [`TICK`] the thread samples the XDP verdict counters into
//! atomics the node handle reads; every [`EXPIRY_INTERVAL`] it removes expired quarantines
//! from the maps and tells shards to forget theirs.
//!
//! # Limits
//! Quarantine offense counts are kept for at most [`OFFENDERS_MAX`] links and publishers
//! (cleared when full). A shard whose command queue is full misses an update; that is counted
//! ([`PolicyCounters::shard_updates_dropped`]) and the shard keeps its older state. Commands
//! are not dropped: the conductor waits for room instead (`conductor.rs`).

use crate::conductor::Conductor;
use crate::shard::{ShardCommand, ShardEvent};
use crossbeam_channel::{select, Receiver, Sender};
use runnel_core::filter::FilterUpdate;
use runnel_core::link::{LinkConfig, LinkRole};
use runnel_core::relay::Event;
use runnel_ebpf::{monotonic_ns, LinkEntry, XdpError, XdpFilter, VERDICT_COUNT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First quarantine of a link or publisher.
pub const QUARANTINE_FIRST_NS: u64 = 10_000_000_000;
/// Longest quarantine (repeat offenders double up to this).
pub const QUARANTINE_MAX_NS: u64 = 600_000_000_000;
/// Links and publishers whose offense counts are remembered.
pub const OFFENDERS_MAX: usize = 65_536;
/// How often XDP counters are sampled.
pub const TICK: Duration = Duration::from_millis(100);
/// How often expired quarantines are removed.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// How soon the conductor retries a command that waits for room in a shard's queue.
pub const SHARD_QUEUE_RETRY: Duration = Duration::from_millis(1);

/// What the policy thread counts; read through the node handle.
#[derive(Debug, Default)]
pub struct PolicyCounters {
    /// XDP verdict counts summed over CPUs, as last sampled (zero with XDP off).
    pub xdp_verdicts: [AtomicU64; VERDICT_COUNT],
    pub quarantines: AtomicU64,
    /// Updates a shard did not get because its command queue was full.
    pub shard_updates_dropped: AtomicU64,
    /// XDP map writes that failed (a full map, or the kernel refused).
    pub xdp_map_errors: AtomicU64,
    /// Events the node handle's reader did not take in time.
    pub events_dropped: AtomicU64,
}

pub(crate) struct Policy {
    pub(crate) xdp: Option<XdpFilter>,
    pub(crate) shards: Vec<Sender<ShardCommand>>,
    pub(crate) events_in: Receiver<ShardEvent>,
    pub(crate) events_out: Sender<ShardEvent>,
    pub(crate) conductor: Conductor,
    pub(crate) counters: Arc<PolicyCounters>,
    pub(crate) stop: Arc<AtomicBool>,
}

struct Quarantines {
    offenses: HashMap<QuarantineKey, u32>,
    /// Active quarantines with their expiry, for removal from the maps.
    active: HashMap<QuarantineKey, u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum QuarantineKey {
    Link(u32),
    Publisher([u8; 20]),
}

impl Quarantines {
    /// The expiry of a new quarantine for `key` at `now_ns`, counting the offense.
    fn offend(&mut self, key: QuarantineKey, now_ns: u64) -> u64 {
        if self.offenses.len() >= OFFENDERS_MAX && !self.offenses.contains_key(&key) {
            self.offenses.clear();
        }
        let offenses = self.offenses.entry(key).or_insert(0);
        *offenses = offenses.saturating_add(1);
        let duration = QUARANTINE_FIRST_NS.saturating_mul(1u64 << (*offenses - 1).min(16)).min(QUARANTINE_MAX_NS);
        let until = now_ns.saturating_add(duration);
        self.active.insert(key, until);
        until
    }
}

impl Policy {
    /// Runs until the stop flag is set (checked every [`TICK`]), then answers the commands
    /// still owed a response.
    pub(crate) fn run(mut self) {
        let mut quarantines = Quarantines { offenses: HashMap::new(), active: HashMap::new() };
        let mut next_expiry = Instant::now() + EXPIRY_INTERVAL;
        let (commands_in, acks_in) = (self.conductor.commands_in.clone(), self.conductor.acks_in.clone());
        let not_now = crossbeam_channel::never();
        while !self.stop.load(Ordering::Acquire) {
            // Commands stay in their queue while the conductor has no room to answer them.
            let commands = if self.conductor.can_take() { &commands_in } else { &not_now };
            let wait = if self.conductor.is_holding() { SHARD_QUEUE_RETRY } else { TICK };
            select! {
                recv(self.events_in) -> event => match event {
                    Ok(event) => self.handle_event(event, &mut quarantines),
                    Err(_) => break,
                },
                recv(acks_in) -> ack => match ack {
                    Ok(ack) => self.conductor.on_ack(ack, &mut self.xdp),
                    Err(_) => break,
                },
                recv(commands) -> command => match command {
                    Ok((id, command)) => self.conductor.take(id, command, &mut self.xdp, &self.shards),
                    Err(_) => break,
                },
                default(wait) => {}
            }
            self.conductor.retry_held(&mut self.xdp, &self.shards);
            self.sample_xdp();
            if Instant::now() >= next_expiry {
                next_expiry = Instant::now() + EXPIRY_INTERVAL;
                self.expire(&mut quarantines);
            }
        }
        self.conductor.shut_down();
    }

    fn handle_event(&mut self, event: ShardEvent, quarantines: &mut Quarantines) {
        match event.event {
            Event::Joined { part } => {
                if let Some(xdp) = &mut self.xdp {
                    count_error(&self.counters, xdp.join(part.0));
                }
            }
            Event::SignatureFailure { link_id, publisher, publisher_proven } => {
                let now = monotonic_ns();
                let until_ns = quarantines.offend(QuarantineKey::Link(link_id), now);
                self.broadcast(FilterUpdate::QuarantineLink { link_id, until_ns });
                self.counters.quarantines.fetch_add(1, Ordering::Relaxed);
                if publisher_proven {
                    let until_ns = quarantines.offend(QuarantineKey::Publisher(publisher), now);
                    self.broadcast(FilterUpdate::QuarantinePublisher { publisher, until_ns });
                    self.counters.quarantines.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The shard has counted and cut it; the node handle's reader hears of it below.
            Event::SlowConsumer { .. } => {}
            // Replacing a silent neighbor is the control process's choice (peering).
            Event::NeighborSilent { .. } => {}
        }
        if self.events_out.try_send(event).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies `update` to the XDP maps and sends it to every shard.
    fn broadcast(&mut self, update: FilterUpdate) {
        if let Some(xdp) = &mut self.xdp {
            count_error(&self.counters, apply_to_xdp(xdp, &update));
        }
        for shard in &self.shards {
            if shard.try_send(ShardCommand::Filter(update)).is_err() {
                self.counters.shard_updates_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn sample_xdp(&self) {
        let Some(xdp) = &self.xdp else { return };
        match xdp.verdict_counts() {
            Ok(counts) => {
                for (slot, count) in self.counters.xdp_verdicts.iter().zip(counts) {
                    slot.store(count, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.counters.xdp_map_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn expire(&mut self, quarantines: &mut Quarantines) {
        let now = monotonic_ns();
        let expired: Vec<QuarantineKey> = quarantines.active.iter().filter(|(_, &until)| until <= now).map(|(key, _)| *key).collect();
        for key in &expired {
            quarantines.active.remove(key);
            let update = match *key {
                QuarantineKey::Link(link_id) => FilterUpdate::ReleaseLink { link_id },
                QuarantineKey::Publisher(publisher) => FilterUpdate::ReleasePublisher { publisher },
            };
            if let Some(xdp) = &mut self.xdp {
                count_error(&self.counters, apply_to_xdp(xdp, &update));
            }
        }
        if !expired.is_empty() {
            for shard in &self.shards {
                if shard.try_send(ShardCommand::ExpireFilter).is_err() {
                    self.counters.shard_updates_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn count_error(counters: &PolicyCounters, result: Result<(), XdpError>) {
    if result.is_err() {
        counters.xdp_map_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds or replaces a link in the XDP `links` map (at start for the config's links, and for
/// `AddLink` commands).
pub(crate) fn set_xdp_link(xdp: &mut XdpFilter, link: &LinkConfig) -> Result<(), XdpError> {
    let role = match link.role {
        LinkRole::Neighbor => runnel_ebpf::ROLE_NEIGHBOR,
        LinkRole::Client => runnel_ebpf::ROLE_CLIENT,
    };
    xdp.set_link(link.id, &LinkEntry::new(link.key.0, role, link.rate_datagrams_per_s, link.burst_datagrams))
}

/// Writes one policy update into the XDP maps.
pub(crate) fn apply_to_xdp(xdp: &mut XdpFilter, update: &FilterUpdate) -> Result<(), XdpError> {
    match *update {
        FilterUpdate::QuarantineLink { link_id, until_ns } => xdp.quarantine_link(link_id, until_ns),
        FilterUpdate::ReleaseLink { link_id } => xdp.release_link(link_id),
        FilterUpdate::QuarantinePublisher { publisher, until_ns } => xdp.quarantine_publisher(publisher, until_ns),
        FilterUpdate::ReleasePublisher { publisher } => xdp.release_publisher(publisher),
        FilterUpdate::SetRestricted { part, restricted } => xdp.set_restricted(part.0, restricted),
        FilterUpdate::Permit { part, publisher, until_ns } => xdp.permit(part.0, publisher, until_ns),
        FilterUpdate::Revoke { part, publisher } => xdp.revoke(part.0, publisher),
        // Client scopes are the shards' alone: XDP passes what they drop.
        FilterUpdate::ScopeClient { .. } | FilterUpdate::UnscopeClient { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: repeat offenses double the quarantine up to the cap.
    #[test]
    fn quarantine_doubles_to_cap() {
        let mut quarantines = Quarantines { offenses: HashMap::new(), active: HashMap::new() };
        let key = QuarantineKey::Link(1);
        assert_eq!(quarantines.offend(key, 0), QUARANTINE_FIRST_NS);
        assert_eq!(quarantines.offend(key, 0), 2 * QUARANTINE_FIRST_NS);
        for _ in 0..20 {
            quarantines.offend(key, 0);
        }
        assert_eq!(quarantines.offend(key, 0), QUARANTINE_MAX_NS);
        assert_eq!(quarantines.offend(QuarantineKey::Publisher([1; 20]), 5), 5 + QUARANTINE_FIRST_NS);
    }
}
