//! Stream permissions as the registry says they are, rebuilt from its events.
//!
//! [`PermissionBook`] is a fold of the registry's events (sans-I/O: tests and the follower
//! drive it the same way). Every `PermissionUpdated` carries a user's whole permission, so
//! the book never has to read contract storage: the state after a block is a pure function
//! of the events up to that block. That makes reorgs simple: [`Follower`] keeps the events
//! it applied with their blocks and the hashes of the blocks it has seen; when a seen block's
//! hash changes, it drops the events after the fork point and folds the rest again.
//!
//! The book's rules are the contract's: a permission holds while its expiration (Unix
//! seconds) is ≥ the time, user `address(0)` stands for everyone, and deleting a stream
//! forgets every permission of it (the contract bumps the stream's version).

use crate::contracts::IStreamRegistry;
use crate::rpc::Chain;
use crate::ChainError;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::{BlockNumberOrTag, Filter, Log};
use alloy::sol_types::SolEvent;
use runnel_proto::stream::{parse_stream_id, StreamPart, StreamPartKey, PARTITIONS_MAX};
use std::collections::{BTreeMap, VecDeque};

/// A user's publish and subscribe expirations (Unix seconds; `u64::MAX` = never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub publish_until: u64,
    pub subscribe_until: u64,
}

/// One stream in the book.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamEntry {
    /// From the metadata's `"partitions"` (1 when absent; clamped to 1..=PARTITIONS_MAX).
    pub partitions: u32,
    pub metadata: String,
    /// Users with a live or expired publish/subscribe grant; `Address::ZERO` = public.
    pub users: BTreeMap<Address, Grant>,
}

/// A registry event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    Created { stream: String, metadata: String },
    Updated { stream: String, metadata: String },
    Deleted { stream: String },
    Permission { stream: String, user: Address, grant: Grant },
}

/// What the dataplane must enforce for one stream part: publishers and until when (Unix
/// seconds), or public (`None`).
pub type PartPolicy = Option<BTreeMap<[u8; 20], u64>>;

/// The registry's state, as far as Runnel needs it.
#[derive(Clone, Debug, Default)]
pub struct PermissionBook {
    streams: BTreeMap<String, StreamEntry>,
    /// Events about stream ids Runnel cannot carry (ENS names, over-long paths): skipped.
    pub skipped_events: u64,
}

fn saturate(value: U256) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn partitions_of(metadata: &str) -> u32 {
    let parsed: Option<u64> =
        serde_json::from_str::<serde_json::Value>(metadata).ok().and_then(|json| json.get("partitions").and_then(|p| p.as_u64()));
    parsed.map_or(1, |p| p.clamp(1, u64::from(PARTITIONS_MAX)) as u32)
}

impl PermissionBook {
    /// Applies one event.
    pub fn apply(&mut self, event: &RegistryEvent) {
        let stream = match event {
            RegistryEvent::Created { stream, .. }
            | RegistryEvent::Updated { stream, .. }
            | RegistryEvent::Deleted { stream }
            | RegistryEvent::Permission { stream, .. } => stream,
        };
        let Ok(stream) = parse_stream_id(stream) else {
            self.skipped_events += 1;
            return;
        };
        match event {
            RegistryEvent::Created { metadata, .. } => {
                self.streams.insert(
                    stream,
                    StreamEntry { partitions: partitions_of(metadata), metadata: metadata.clone(), users: BTreeMap::new() },
                );
            }
            RegistryEvent::Updated { metadata, .. } => {
                let entry = self.streams.entry(stream).or_default();
                entry.partitions = partitions_of(metadata);
                entry.metadata = metadata.clone();
            }
            RegistryEvent::Deleted { .. } => {
                self.streams.remove(&stream);
            }
            RegistryEvent::Permission { user, grant, .. } => {
                // The contract emits the creator's permission after StreamCreated; a
                // permission for a stream the book has not seen created (a scan that starts
                // late) still counts.
                let entry = self.streams.entry(stream).or_insert_with(|| StreamEntry { partitions: 1, ..StreamEntry::default() });
                if *grant == Grant::default() {
                    entry.users.remove(user);
                } else {
                    entry.users.insert(*user, *grant);
                }
            }
        }
    }

    pub fn stream(&self, stream_id: &str) -> Option<&StreamEntry> {
        self.streams.get(stream_id)
    }

    pub fn streams(&self) -> impl Iterator<Item = (&String, &StreamEntry)> {
        self.streams.iter()
    }

    /// May `user` publish to `stream_id` at `now` (Unix seconds)?
    pub fn may_publish(&self, stream_id: &str, user: Address, now: u64) -> bool {
        self.holds(stream_id, user, now, |grant| grant.publish_until)
    }

    /// May `user` subscribe to `stream_id` at `now`?
    pub fn may_subscribe(&self, stream_id: &str, user: Address, now: u64) -> bool {
        self.holds(stream_id, user, now, |grant| grant.subscribe_until)
    }

    fn holds(&self, stream_id: &str, user: Address, now: u64, until: impl Fn(&Grant) -> u64) -> bool {
        let Some(entry) = self.streams.get(stream_id) else { return false };
        [user, Address::ZERO].iter().any(|who| entry.users.get(who).is_some_and(|grant| until(grant) >= now))
    }

    /// The stream part a key stands for, if it is a part of a stream in the book.
    pub fn part_of_key(&self, key: &StreamPartKey) -> Option<StreamPart> {
        // A node serves few streams and the registry holds thousands at most, so a scan is
        // cheap next to a chain round trip; the control process calls this per client link.
        self.parts().find(|(part_key, _)| part_key == key).map(|(_, part)| part)
    }

    /// Every stream part of every stream in the book.
    pub fn parts(&self) -> impl Iterator<Item = (StreamPartKey, StreamPart)> + '_ {
        self.streams.iter().flat_map(|(stream, entry)| {
            (0..entry.partitions).filter_map(move |partition| StreamPart::new(stream, partition).ok().map(|part| (part.key(), part)))
        })
    }

    /// What the dataplane enforces for each stream part at `now`: public parts map to
    /// `None`, the others to their publishers with live grants.
    pub fn policies(&self, now: u64) -> BTreeMap<StreamPartKey, PartPolicy> {
        let mut policies = BTreeMap::new();
        for (stream, entry) in &self.streams {
            let public = entry.users.get(&Address::ZERO).is_some_and(|grant| grant.publish_until >= now);
            let policy: PartPolicy = if public {
                None
            } else {
                Some(
                    entry
                        .users
                        .iter()
                        .filter(|(user, grant)| **user != Address::ZERO && grant.publish_until >= now)
                        .map(|(user, grant)| (user.into_array(), grant.publish_until))
                        .collect(),
                )
            };
            for partition in 0..entry.partitions {
                if let Ok(part) = StreamPart::new(stream, partition) {
                    policies.insert(part.key(), policy.clone());
                }
            }
        }
        policies
    }
}

/// Decodes a registry log; `None` for events the book does not use.
pub fn decode(log: &Log) -> Option<RegistryEvent> {
    let topic = *log.topic0()?;
    let data = log.data();
    if topic == IStreamRegistry::PermissionUpdated::SIGNATURE_HASH {
        let e = IStreamRegistry::PermissionUpdated::decode_log_data(data).ok()?;
        let grant = Grant { publish_until: saturate(e.publishExpiration), subscribe_until: saturate(e.subscribeExpiration) };
        Some(RegistryEvent::Permission { stream: e.streamId, user: e.user, grant })
    } else if topic == IStreamRegistry::StreamCreated::SIGNATURE_HASH {
        let e = IStreamRegistry::StreamCreated::decode_log_data(data).ok()?;
        Some(RegistryEvent::Created { stream: e.id, metadata: e.metadata })
    } else if topic == IStreamRegistry::StreamUpdated::SIGNATURE_HASH {
        let e = IStreamRegistry::StreamUpdated::decode_log_data(data).ok()?;
        Some(RegistryEvent::Updated { stream: e.id, metadata: e.metadata })
    } else if topic == IStreamRegistry::StreamDeleted::SIGNATURE_HASH {
        let e = IStreamRegistry::StreamDeleted::decode_log_data(data).ok()?;
        Some(RegistryEvent::Deleted { stream: e.id })
    } else {
        None
    }
}

/// Most blocks one `eth_getLogs` asks for (public endpoints cap ranges).
pub const LOG_RANGE_MAX: u64 = 2_000;
/// Block hashes kept to find a fork point; a deeper reorg rescans from the start.
pub const REORG_DEPTH_MAX: usize = 256;

/// What one [`Follower::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// The head block after the poll.
    pub head: u64,
    /// Events applied.
    pub events: usize,
    /// Blocks rolled back by a reorg (0 = none).
    pub reorged_blocks: u64,
}

/// Follows the registry's events into a [`PermissionBook`].
#[derive(Debug)]
pub struct Follower {
    chain: Chain,
    registry: Address,
    start_block: u64,
    /// Next block to read logs from.
    next_block: u64,
    book: PermissionBook,
    /// Events applied, with their block numbers, oldest first.
    events: Vec<(u64, RegistryEvent)>,
    /// (number, hash) of blocks read, oldest first; at most [`REORG_DEPTH_MAX`].
    seen: VecDeque<(u64, B256)>,
    /// Reorgs handled since start.
    pub reorgs: u64,
}

impl Follower {
    /// Follows `registry` from `start_block` (its deployment block; 0 scans everything).
    pub fn new(chain: Chain, registry: Address, start_block: u64) -> Follower {
        Follower {
            chain,
            registry,
            start_block,
            next_block: start_block,
            book: PermissionBook::default(),
            events: Vec::new(),
            seen: VecDeque::new(),
            reorgs: 0,
        }
    }

    pub fn book(&self) -> &PermissionBook {
        &self.book
    }

    /// The last block whose events are in the book (`None` before the first poll).
    pub fn synced_to(&self) -> Option<u64> {
        self.next_block.checked_sub(1).filter(|_| self.next_block > self.start_block)
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self
            .chain
            .provider()
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.chain.rpc_error("eth_getBlockByNumber", e))?;
        Ok(block.map(|b| b.header.hash))
    }

    /// Reads everything new up to the head. An RPC failure leaves the book as it was (the
    /// next poll continues where this one stopped).
    pub async fn poll(&mut self) -> Result<PollReport, ChainError> {
        let reorged_blocks = self.check_reorg().await?;
        let head = self.chain.block_number().await?;
        let mut report = PollReport { reorged_blocks, head, ..PollReport::default() };
        while self.next_block <= head {
            let to = head.min(self.next_block + LOG_RANGE_MAX - 1);
            let filter = Filter::new().address(self.registry).from_block(self.next_block).to_block(to);
            let logs = self.chain.provider().get_logs(&filter).await.map_err(|e| self.chain.rpc_error("eth_getLogs", e))?;
            // The hash of the range's last block, read after its logs: if the block changes
            // between the two reads, the next poll sees the new hash and rolls back.
            let Some(hash) = self.block_hash(to).await? else {
                // The node's head moved back under us: a reorg to a shorter chain; the
                // next poll's check handles it.
                break;
            };
            for log in logs.iter().filter(|log| !log.removed) {
                let Some(event) = decode(log) else { continue };
                self.book.apply(&event);
                self.events.push((log.block_number.unwrap_or(to), event));
                report.events += 1;
            }
            self.remember(to, hash);
            self.next_block = to + 1;
        }
        Ok(report)
    }

    fn remember(&mut self, number: u64, hash: B256) {
        self.seen.push_back((number, hash));
        while self.seen.len() > REORG_DEPTH_MAX {
            self.seen.pop_front();
        }
    }

    /// Compares the blocks seen with the chain's; on a difference rolls the book back to
    /// the newest block that still matches. Returns how many blocks were rolled back.
    async fn check_reorg(&mut self) -> Result<u64, ChainError> {
        let Some(&(newest, newest_hash)) = self.seen.back() else { return Ok(0) };
        if self.block_hash(newest).await? == Some(newest_hash) {
            return Ok(0);
        }
        let mut fork = None;
        for index in (0..self.seen.len()).rev() {
            let (number, hash) = self.seen[index];
            if self.block_hash(number).await? == Some(hash) {
                fork = Some(number);
                self.seen.truncate(index + 1);
                break;
            }
        }
        let rolled_back = match fork {
            Some(number) => {
                self.events.retain(|(block, _)| *block <= number);
                let rolled_back = self.next_block.saturating_sub(number + 1);
                self.next_block = number + 1;
                rolled_back
            }
            None => {
                // Deeper than the hashes kept: start over.
                self.seen.clear();
                self.events.clear();
                let rolled_back = self.next_block.saturating_sub(self.start_block);
                self.next_block = self.start_block;
                rolled_back
            }
        };
        let mut book = PermissionBook { skipped_events: self.book.skipped_events, ..PermissionBook::default() };
        for (_, event) in &self.events {
            book.apply(event);
        }
        self.book = book;
        self.reorgs += 1;
        Ok(rolled_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "0x1234567890123456789012345678901234567890/sensors";

    fn user(byte: u8) -> Address {
        Address::from([byte; 20])
    }

    #[test]
    fn grants_expire_and_public_overrides_the_list() {
        let mut book = PermissionBook::default();
        book.apply(&RegistryEvent::Created { stream: STREAM.into(), metadata: r#"{"partitions":3}"#.into() });
        book.apply(&RegistryEvent::Permission {
            stream: STREAM.into(),
            user: user(1),
            grant: Grant { publish_until: 100, subscribe_until: u64::MAX },
        });
        assert!(book.may_publish(STREAM, user(1), 100));
        assert!(!book.may_publish(STREAM, user(1), 101));
        assert!(book.may_subscribe(STREAM, user(1), 10_000));
        assert!(!book.may_publish(STREAM, user(2), 50));
        let policies = book.policies(50);
        assert_eq!(policies.len(), 3, "one policy per partition");
        assert!(policies.values().all(|p| p.as_ref().is_some_and(|list| list.get(&[1; 20]) == Some(&100))));
        book.apply(&RegistryEvent::Permission {
            stream: STREAM.into(),
            user: Address::ZERO,
            grant: Grant { publish_until: u64::MAX, subscribe_until: 0 },
        });
        assert!(book.may_publish(STREAM, user(2), 50));
        assert!(!book.may_subscribe(STREAM, user(2), 50));
        assert!(book.policies(50).values().all(Option::is_none));
    }

    #[test]
    fn deleting_a_stream_forgets_its_permissions() {
        let mut book = PermissionBook::default();
        book.apply(&RegistryEvent::Created { stream: STREAM.into(), metadata: String::new() });
        book.apply(&RegistryEvent::Permission {
            stream: STREAM.into(),
            user: user(1),
            grant: Grant { publish_until: u64::MAX, subscribe_until: u64::MAX },
        });
        book.apply(&RegistryEvent::Deleted { stream: STREAM.into() });
        book.apply(&RegistryEvent::Created { stream: STREAM.into(), metadata: String::new() });
        assert!(!book.may_publish(STREAM, user(1), 0));
        assert_eq!(book.policies(0).len(), 1, "no metadata: one partition");
    }

    #[test]
    fn ids_runnel_cannot_carry_are_skipped_and_counted() {
        let mut book = PermissionBook::default();
        book.apply(&RegistryEvent::Created { stream: "name.eth/path".into(), metadata: String::new() });
        assert_eq!(book.skipped_events, 1);
        assert_eq!(book.streams().count(), 0);
    }

    #[test]
    fn metadata_partitions_are_clamped() {
        assert_eq!(partitions_of(r#"{"partitions": 0}"#), 1);
        assert_eq!(partitions_of(r#"{"partitions": 100000}"#), PARTITIONS_MAX);
        assert_eq!(partitions_of("not json"), 1);
        assert_eq!(partitions_of(r#"{"partitions": "7"}"#), 1);
    }
}
