//! The control process's view of the chain: it follows the stream registry's events on its
//! own thread and turns the permissions it learns into two things the fast path can use
//! without ever waiting for the chain —
//! - filter updates for the dataplane (`SetRestricted`, `Permit`, `Revoke` through the
//!   command interface, which writes the shards' tables and the XDP maps), diffed against
//!   what the dataplane already holds ([`policy_updates`]);
//! - the admission check of client links ([`ChainAdmission`]: a subscriber without
//!   Subscribe permission is refused at subscribe time, a publisher without Publish
//!   permission at link time).
//!
//! Fail closed: until the first sync, and for stream parts the registry does not know, a
//! joined stream part is restricted with no publisher, and client links are refused (`Busy`
//! before the first sync, `UnknownStream` after). An RPC outage keeps the last book: the
//! permissions stay as they were when the chain was last read (logged once per outage).
//!
//! Timing: the registry says "valid while expiration ≥ block time" in Unix seconds; the
//! dataplane compares `CLOCK_MONOTONIC` nanoseconds. [`monotonic_deadline`] converts one into
//! the other at the moment the update is sent (a grant valid through second `t` ends at
//! `t + 1`).

use alloy::primitives::Address;
use runnel_chain::permissions::{Follower, PartPolicy, PermissionBook};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_core::filter::FilterUpdate;
use runnel_peering::wire::{ClientAccess, RefuseReason};
use runnel_peering::ClientAdmission;
use runnel_proto::stream::StreamPartKey;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, clap::Args)]
pub struct ChainArgs {
    /// JSON-RPC endpoint (http:// or https://) of the chain that holds the stream registry:
    /// publish/subscribe permissions then come from the registry (needs --registry).
    #[arg(long, env = "RUNNEL_CHAIN_RPC", value_name = "URL", requires = "registry")]
    pub chain_rpc: Option<String>,
    /// The StreamRegistry contract's address (0x + 40 hex digits).
    #[arg(long, env = "RUNNEL_REGISTRY", value_name = "ADDRESS", requires = "chain_rpc")]
    pub registry: Option<String>,
    /// The block to read registry events from: the contract's deployment block (0 reads the
    /// whole chain, slow on a long one).
    #[arg(long, env = "RUNNEL_REGISTRY_BLOCK", value_name = "BLOCK", default_value_t = 0)]
    pub registry_block: u64,
    /// How often the chain is polled for new blocks, in milliseconds: the most a revocation
    /// waits after its block before the dataplane enforces it.
    #[arg(long, env = "RUNNEL_CHAIN_POLL_MS", value_name = "MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub chain_poll_ms: u64,
}

/// What the follower thread last learned; read by the session loop and the admission check.
#[derive(Debug, Default)]
pub struct ChainView {
    /// The book after the last successful poll.
    pub book: Arc<PermissionBook>,
    /// Bumped whenever the book changes (events or a reorg).
    pub generation: u64,
    /// The last block the book includes; `None` before the first sync.
    pub synced_to: Option<u64>,
    pub polls: u64,
    pub poll_errors: u64,
    pub reorgs: u64,
    pub events: u64,
    /// The error of the current outage, if the last poll failed.
    pub last_error: Option<String>,
}

/// The follower thread and what it shares.
pub struct ChainWatch {
    view: Arc<Mutex<ChainView>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub registry: Address,
    pub endpoint: String,
}

impl ChainWatch {
    /// Starts following the registry; `None` when no chain is configured.
    pub fn start(args: &ChainArgs) -> Result<Option<ChainWatch>, String> {
        let (Some(endpoint), Some(registry_text)) = (&args.chain_rpc, &args.registry) else { return Ok(None) };
        let registry: Address =
            registry_text.parse().map_err(|e| format!("--registry {registry_text:?}: {e} (expected 0x and 40 hex digits)"))?;
        let chain = Chain::connect(endpoint, None, ChainConfig::default()).map_err(|e| format!("--chain-rpc {endpoint}: {e}"))?;
        let view = Arc::new(Mutex::new(ChainView::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_millis(args.chain_poll_ms);
        let follower = Follower::new(chain, registry, args.registry_block);
        let thread = {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::Builder::new()
                .name("runnel-chain".into())
                .spawn(move || follow(follower, &view, &stop, interval))
                .map_err(|e| format!("cannot start the chain thread: {e}"))?
        };
        logln!("runnel control: following the stream registry {registry:#x} at {endpoint} (every {} ms)", args.chain_poll_ms);
        Ok(Some(ChainWatch { view, stop, thread: Some(thread), registry, endpoint: endpoint.clone() }))
    }

    pub fn view(&self) -> std::sync::MutexGuard<'_, ChainView> {
        self.view.lock().expect("no panics while holding it")
    }

    /// The admission check for client links, answering from this watch's book.
    pub fn admission(&self) -> Arc<dyn ClientAdmission> {
        Arc::new(ChainAdmission { view: self.view.clone() })
    }
}

impl Drop for ChainWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The follower loop: poll, publish the book when it changed, sleep.
fn follow(mut follower: Follower, view: &Mutex<ChainView>, stop: &AtomicBool, interval: Duration) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            logln!("runnel control: cannot start the chain thread's runtime: {error}; permissions stay closed");
            return;
        }
    };
    while !stop.load(Ordering::Acquire) {
        let result = runtime.block_on(follower.poll());
        {
            let mut view = view.lock().expect("no panics while holding it");
            view.polls += 1;
            match result {
                Ok(report) => {
                    if let Some(error) = view.last_error.take() {
                        logln!("runnel control: the chain is back (it failed with: {error}); synced to block {}", report.head);
                    }
                    if report.events > 0 || report.reorged_blocks > 0 || view.synced_to.is_none() {
                        view.book = Arc::new(follower.book().clone());
                        view.generation += 1;
                    }
                    if report.reorged_blocks > 0 {
                        logln!("runnel control: chain reorg: {} blocks replaced; permissions rebuilt", report.reorged_blocks);
                    }
                    view.events += report.events as u64;
                    view.reorgs = follower.reorgs;
                    view.synced_to = follower.synced_to();
                }
                Err(error) => {
                    view.poll_errors += 1;
                    if view.last_error.is_none() {
                        logln!("runnel control: reading the chain failed: {error}; keeping the permissions as of the last sync");
                    }
                    view.last_error = Some(error.to_string());
                }
            }
        }
        // Sleep in short steps so that a stop is noticed quickly.
        let until = std::time::Instant::now() + interval;
        while !stop.load(Ordering::Acquire) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10).min(interval));
        }
    }
}

/// Client-link admission from the followed registry.
#[derive(Debug)]
struct ChainAdmission {
    view: Arc<Mutex<ChainView>>,
}

impl ClientAdmission for ChainAdmission {
    fn admit(&self, client: [u8; 20], part: StreamPartKey, access: ClientAccess) -> Result<(), RefuseReason> {
        let (book, synced) = {
            let view = self.view.lock().expect("no panics while holding it");
            (view.book.clone(), view.synced_to.is_some())
        };
        if !synced {
            return Err(RefuseReason::Busy);
        }
        let Some(stream_part) = book.part_of_key(&part) else { return Err(RefuseReason::UnknownStream) };
        let now = unix_now_s();
        let user = Address::from(client);
        let permitted = match access {
            ClientAccess::Publish => book.may_publish(stream_part.stream_id(), user, now),
            ClientAccess::Subscribe => book.may_subscribe(stream_part.stream_id(), user, now),
        };
        if permitted {
            Ok(())
        } else {
            Err(RefuseReason::NotPermitted)
        }
    }
}

pub fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `CLOCK_MONOTONIC` instant (ns) at which a grant valid through Unix second `until`
/// ends, computed now; `u64::MAX` for a grant that never ends.
pub fn monotonic_deadline(until: u64) -> u64 {
    if until == u64::MAX {
        return u64::MAX;
    }
    let unix_now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let end_ns = (u128::from(until) + 1) * 1_000_000_000;
    let remaining = end_ns.saturating_sub(unix_now_ns);
    let deadline = u128::from(runnel_proto::clock::monotonic_ns()) + remaining;
    u64::try_from(deadline).unwrap_or(u64::MAX - 1)
}

/// What the dataplane must enforce for each of `joined`: the registry's policy for a part it
/// knows, and "restricted, nobody" for one it does not (or before the first sync).
pub fn policies_for(joined: &[StreamPartKey], view: &ChainView, now: u64) -> BTreeMap<StreamPartKey, PartPolicy> {
    let all = if view.synced_to.is_some() { view.book.policies(now) } else { BTreeMap::new() };
    joined.iter().map(|part| (*part, all.get(part).cloned().unwrap_or_else(|| Some(BTreeMap::new())))).collect()
}

/// The filter updates that take the dataplane from `old` to `new` (parts missing from `new`
/// are released: public again, their permits revoked). Within a part, permits go in before
/// the part is restricted, so a permitted publisher is never dropped in between; `deadline`
/// converts a grant's Unix-second expiry into the dataplane's clock.
pub fn policy_updates(
    old: &BTreeMap<StreamPartKey, PartPolicy>,
    new: &BTreeMap<StreamPartKey, PartPolicy>,
    deadline: impl Fn(u64) -> u64,
) -> Vec<FilterUpdate> {
    let empty = BTreeMap::new();
    let mut updates = Vec::new();
    let parts: std::collections::BTreeSet<&StreamPartKey> = old.keys().chain(new.keys()).collect();
    for part in parts {
        let before = old.get(part);
        let after = new.get(part);
        if before.is_some() && before == after {
            continue;
        }
        let before_list = before.and_then(Option::as_ref).unwrap_or(&empty);
        match after {
            Some(Some(publishers)) => {
                for (publisher, until) in publishers {
                    if before_list.get(publisher) != Some(until) {
                        updates.push(FilterUpdate::Permit { part: *part, publisher: *publisher, until_ns: deadline(*until) });
                    }
                }
                if !matches!(before, Some(Some(_))) {
                    updates.push(FilterUpdate::SetRestricted { part: *part, restricted: true });
                }
                for publisher in before_list.keys().filter(|p| !publishers.contains_key(*p)) {
                    updates.push(FilterUpdate::Revoke { part: *part, publisher: *publisher });
                }
            }
            Some(None) | None => {
                updates.push(FilterUpdate::SetRestricted { part: *part, restricted: false });
                for publisher in before_list.keys() {
                    updates.push(FilterUpdate::Revoke { part: *part, publisher: *publisher });
                }
            }
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: StreamPartKey = StreamPartKey([0xa; 32]);
    const B: StreamPartKey = StreamPartKey([0xb; 32]);
    const P: [u8; 20] = [1; 20];
    const Q: [u8; 20] = [2; 20];

    fn restricted(entries: &[([u8; 20], u64)]) -> PartPolicy {
        Some(entries.iter().copied().collect())
    }

    /// Applies updates to a model of the dataplane's tables.
    #[derive(Default, Debug, PartialEq)]
    struct Tables {
        restricted: std::collections::BTreeSet<StreamPartKey>,
        permits: BTreeMap<(StreamPartKey, [u8; 20]), u64>,
    }

    impl Tables {
        fn apply(&mut self, updates: &[FilterUpdate]) {
            for update in updates {
                match *update {
                    FilterUpdate::SetRestricted { part, restricted: true } => {
                        self.restricted.insert(part);
                    }
                    FilterUpdate::SetRestricted { part, restricted: false } => {
                        self.restricted.remove(&part);
                    }
                    FilterUpdate::Permit { part, publisher, until_ns } => {
                        self.permits.insert((part, publisher), until_ns);
                    }
                    FilterUpdate::Revoke { part, publisher } => {
                        self.permits.remove(&(part, publisher));
                    }
                    _ => panic!("policy_updates made {update:?}"),
                }
            }
        }

        fn of(policies: &BTreeMap<StreamPartKey, PartPolicy>) -> Tables {
            let mut tables = Tables::default();
            for (part, policy) in policies {
                if let Some(publishers) = policy {
                    tables.restricted.insert(*part);
                    for (publisher, until) in publishers {
                        tables.permits.insert((*part, *publisher), *until);
                    }
                }
            }
            tables
        }
    }

    // Goal: from any state to any other, the updates leave the dataplane's tables exactly as
    // the new policy says, and an unchanged policy costs no update.
    #[test]
    fn updates_take_the_tables_from_any_policy_to_any_other() {
        let states: Vec<BTreeMap<StreamPartKey, PartPolicy>> = vec![
            BTreeMap::new(),
            [(A, None)].into(),
            [(A, restricted(&[]))].into(),
            [(A, restricted(&[(P, u64::MAX)]))].into(),
            [(A, restricted(&[(P, 100), (Q, u64::MAX)])), (B, None)].into(),
            [(A, restricted(&[(Q, 7)])), (B, restricted(&[(P, 9)]))].into(),
        ];
        for old in &states {
            for new in &states {
                let mut tables = Tables::of(old);
                let updates = policy_updates(old, new, |until| until);
                tables.apply(&updates);
                assert_eq!(tables, Tables::of(new), "{old:?} -> {new:?}: {updates:?}");
                if old == new {
                    assert!(updates.is_empty(), "{old:?}: {updates:?}");
                }
            }
        }
    }

    // Goal: a permitted publisher is never dropped while a part becomes restricted: its
    // Permit comes before the SetRestricted.
    #[test]
    fn permits_precede_the_restriction() {
        let new: BTreeMap<_, _> = [(A, restricted(&[(P, u64::MAX)]))].into();
        let updates = policy_updates(&[(A, None)].into(), &new, |until| until);
        let permit = updates.iter().position(|u| matches!(u, FilterUpdate::Permit { .. })).unwrap();
        let restrict = updates.iter().position(|u| matches!(u, FilterUpdate::SetRestricted { restricted: true, .. })).unwrap();
        assert!(permit < restrict, "{updates:?}");
    }

    // Goal: unknown parts and an unsynced book fail closed.
    #[test]
    fn unknown_parts_are_closed() {
        let view = ChainView::default();
        assert_eq!(policies_for(&[A], &view, 0), [(A, restricted(&[]))].into());
        let synced = ChainView { synced_to: Some(1), ..ChainView::default() };
        assert_eq!(policies_for(&[A, B], &synced, 0), [(A, restricted(&[])), (B, restricted(&[]))].into());
    }

    // Goal: a grant through second t ends at t + 1 on the monotonic clock; "never" stays never.
    #[test]
    fn deadlines_convert_unix_seconds_to_the_monotonic_clock() {
        assert_eq!(monotonic_deadline(u64::MAX), u64::MAX);
        let now = unix_now_s();
        let mono = runnel_proto::clock::monotonic_ns();
        let in_ten = monotonic_deadline(now + 10);
        assert!(in_ten > mono + 10_000_000_000 && in_ten <= mono + 11_100_000_000, "{in_ten} vs {mono}");
        assert!(monotonic_deadline(now.saturating_sub(100)) <= runnel_proto::clock::monotonic_ns(), "a past grant is over");
    }
}
