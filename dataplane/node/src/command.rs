//! The node's command interface: how the control process changes a running dataplane — add
//! and remove links, join and leave stream parts, set publish permissions and quarantines —
//! with a correlation id on every command and exactly one response to each.
//!
//! ```no_run
//! use runnel_node::command::{Command, CommandId};
//! use runnel_node::{config::NodeConfig, node::Node};
//! use std::time::Duration;
//! let node = Node::start(NodeConfig::parse("[node]\nlisten = \"127.0.0.1:7000\"\n").unwrap()).unwrap();
//! let part = runnel_proto::stream::StreamPartKey([7; 32]);
//! let id: CommandId = node.submit(Command::Join { part }).unwrap();    // never blocks
//! let answer = node.wait_response(id, Duration::from_secs(1)).unwrap(); // or read node.responses()
//! assert_eq!(answer, Ok(()));
//! ```
//!
//! # How it works
//! Aeron's driver conductor is the model: control and data meet only in typed, bounded
//! queues. [`NodeHandle::submit`](crate::node::NodeHandle::submit) gives the command the
//! next [`CommandId`] and puts it on the node's command queue, without waiting. The policy
//! thread, which is also the node's conductor (it already owns the XDP maps), takes it,
//! checks it against the node's link table, writes the XDP maps, and passes it to the shards
//! it concerns over their command queues: every shard for links and permissions, the owning
//! shard ([`shard_of`](crate::config::shard_of)) for joins and leaves. Each of those shards
//! applies it to its relay between two receive batches and acknowledges it. Once every one
//! has, the conductor finishes the XDP side (a join enters the `joined` map) and sends the
//! [`Response`]: `Ok(())`, or the first [`CommandError`], which says what to fix.
//!
//! What is an error, and what is not:
//! - `AddLink` of a link id that exists with the same configuration is `Ok` (nothing changes:
//!   a restarted control process may replay its state); with a different one it is
//!   [`CommandError::LinkExists`] (remove it first: replacing a link in place would keep its
//!   replay windows and restart its send sequence). An invalid link (a neighbor without a
//!   peer address, a client with one, a rate out of range) is [`CommandError::InvalidLink`].
//! - `RemoveLink` of an unknown id is [`CommandError::UnknownLink`]: the caller's view of the
//!   node is out of date, and saying so is more useful than a silent no-op.
//! - `Join` of a joined stream part is `Ok`; `Leave` of one that is not joined is
//!   [`CommandError::NotJoined`], like `RemoveLink`.
//!
//! Commands take effect in the order they were submitted.
//!
//! # Limits
//! - Every queue is bounded: [`SUBMITTED_COMMANDS_MAX`] commands waiting for the conductor
//!   (a full queue is [`NodeError::CommandQueueFull`](crate::node::NodeError), counted in
//!   [`CommandCounter::RejectedQueueFull`]), [`COMMANDS_IN_FLIGHT_MAX`] commands between
//!   the conductor and the shards, [`RESPONSE_QUEUE_LENGTH_MAX`] unread responses. The
//!   conductor takes a command only when there is room for its response, so no response is
//!   ever dropped; a reader that stops reading responses stops the commands.
//! - A shard that stops (node shutdown, an I/O failure) answers nothing more: commands sent
//!   to it before it stopped never get their response, which is why
//!   [`wait_response`](crate::node::NodeHandle::wait_response) takes a timeout.
//! - `Leave` is undone by the auto-joins of today's relay: a neighbor's Subscribe or a
//!   client's publish joins the stream part again.

use runnel_core::filter::{FilterUpdate, PERMISSIONS_MAX, POLICY_ENTRIES_MAX};
use runnel_core::link::LinkConfig;
use runnel_proto::stream::StreamPartKey;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Commands waiting for the conductor to take them.
pub const SUBMITTED_COMMANDS_MAX: usize = 1024;
/// Commands the conductor has passed to shards and not yet answered.
pub const COMMANDS_IN_FLIGHT_MAX: usize = 64;
/// Responses waiting for the reader of [`NodeHandle::responses`](crate::node::NodeHandle::responses).
pub const RESPONSE_QUEUE_LENGTH_MAX: usize = 1024;

/// The correlation id of a command: unique per node, increasing in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A change to a running node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Adds a link (a neighbor or a client) in every shard and in the XDP `links` map.
    AddLink(LinkConfig),
    /// Removes a link, its interest in every stream part and its replay windows, everywhere.
    RemoveLink { link_id: u32 },
    /// Joins a stream part in its owning shard (which subscribes to it at every neighbor) and
    /// in the XDP `joined` map.
    Join { part: StreamPartKey },
    /// Leaves a stream part: the owning shard forgets it and unsubscribes from its
    /// neighbors; the XDP `joined` map drops it.
    Leave { part: StreamPartKey },
    /// A publish permission (`Permit`, `Revoke`), a stream part's restriction
    /// (`SetRestricted`), or a quarantine and its release, in every shard and the XDP maps.
    Policy(FilterUpdate),
}

impl Command {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::AddLink(_) => "AddLink",
            Command::RemoveLink { .. } => "RemoveLink",
            Command::Join { .. } => "Join",
            Command::Leave { .. } => "Leave",
            Command::Policy(_) => "Policy",
        }
    }
}

/// The one answer to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: CommandId,
    pub result: Result<(), CommandError>,
}

/// Why a command was refused or failed; each says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// `AddLink`: the link's configuration is invalid; `reason` names the field.
    InvalidLink { link_id: u32, reason: String },
    /// `AddLink`: a link with this id exists with a different configuration.
    LinkExists { link_id: u32 },
    /// `AddLink`: the node already has `limit` links.
    TooManyLinks { limit: usize },
    /// `RemoveLink`: no link has this id.
    UnknownLink { link_id: u32 },
    /// `Leave`: the owning shard has not joined the stream part.
    NotJoined { part: StreamPartKey, shard: u16 },
    /// `Join`: the owning shard already carries `limit` stream parts.
    StreamPartsFull { part: StreamPartKey, shard: u16, limit: usize },
    /// `Policy`: a shard's filter table for this update is full.
    FilterTableFull { shard: u16 },
    /// Writing the XDP maps failed.
    Xdp { reason: String },
    /// A shard the command goes to has stopped.
    ShardStopped { shard: u16 },
    /// The node stopped before the command completed.
    Stopped,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::InvalidLink { link_id, reason } => write!(f, "link {link_id} is invalid: {reason}"),
            CommandError::LinkExists { link_id } => write!(
                f,
                "link {link_id} already exists with another configuration (key, role, peer, peer_shards or rate): \
                 send RemoveLink {link_id} first, then AddLink (an identical AddLink is accepted and changes nothing)"
            ),
            CommandError::TooManyLinks { limit } => write!(f, "the node already has {limit} links, its most: remove unused links first"),
            CommandError::UnknownLink { link_id } => {
                write!(f, "no link {link_id} on this node: nothing removed (it was never added, or was already removed)")
            }
            CommandError::NotJoined { part, shard } => {
                write!(f, "stream part {} is not joined (owning shard {shard}): nothing to leave", hex::encode(part.0))
            }
            CommandError::StreamPartsFull { part, shard, limit } => {
                write!(f, "shard {shard} already carries {limit} stream parts, its most: leave some before joining {}", hex::encode(part.0))
            }
            CommandError::FilterTableFull { shard } => write!(
                f,
                "shard {shard}'s filter table for this update is full ({POLICY_ENTRIES_MAX} quarantines or restricted stream parts, \
                 {PERMISSIONS_MAX} permissions): revoke permissions or release quarantines first"
            ),
            CommandError::Xdp { reason } => write!(f, "the XDP maps refused the change: {reason}"),
            CommandError::ShardStopped { shard } => {
                write!(f, "shard {shard} has stopped (the node is stopping, or the shard failed: see the node's stop error)")
            }
            CommandError::Stopped => write!(f, "the node stopped before the command completed"),
        }
    }
}

impl std::error::Error for CommandError {}

/// What the command interface counts. Ids are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CommandCounter {
    /// Commands accepted by `submit`.
    Submitted = 0,
    /// Commands `submit` refused because the node's command queue was full.
    RejectedQueueFull = 1,
    /// Commands answered `Ok`.
    Succeeded = 2,
    /// Commands answered with an error.
    Failed = 3,
    /// Times a command waited in the conductor because a shard's command queue was full.
    WaitedForShardQueue = 4,
    /// Responses `wait_response` read while waiting for another id and later discarded,
    /// because more than [`RESPONSE_QUEUE_LENGTH_MAX`] such responses were never asked for.
    ResponsesDiscarded = 5,
}

impl CommandCounter {
    /// All command counters in id order.
    pub const ALL: [CommandCounter; 6] = [
        CommandCounter::Submitted,
        CommandCounter::RejectedQueueFull,
        CommandCounter::Succeeded,
        CommandCounter::Failed,
        CommandCounter::WaitedForShardQueue,
        CommandCounter::ResponsesDiscarded,
    ];

    /// The metric name (without the `runnel_commands_` prefix and `_total` suffix).
    pub fn name(self) -> &'static str {
        match self {
            CommandCounter::Submitted => "submitted",
            CommandCounter::RejectedQueueFull => "rejected_queue_full",
            CommandCounter::Succeeded => "succeeded",
            CommandCounter::Failed => "failed",
            CommandCounter::WaitedForShardQueue => "waited_for_shard_queue",
            CommandCounter::ResponsesDiscarded => "responses_discarded",
        }
    }
}

/// The command counters, shared by the node handle and the conductor (relaxed atomics).
#[derive(Debug, Default)]
pub struct CommandCounters {
    values: [AtomicU64; CommandCounter::ALL.len()],
}

impl CommandCounters {
    pub(crate) fn increment(&self, counter: CommandCounter) {
        self.values[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, counter: CommandCounter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: command counter ids are dense and stable and their names unique.
    #[test]
    fn command_counter_ids_are_dense_and_names_unique() {
        for (index, counter) in CommandCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        let names: std::collections::HashSet<_> = CommandCounter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), CommandCounter::ALL.len());
    }
}
