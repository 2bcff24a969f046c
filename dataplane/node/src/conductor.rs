//! The conductor: the part of the policy thread that executes [`Command`]s (the interface is
//! documented in [`crate::command`]; the decisions in docs/decisions-commands.md).
//!
//! # How it works
//! The policy thread takes a command from the node's command queue only when
//! [`Conductor::can_take`] says there is room for its answer. [`Conductor::take`] then:
//! 1. checks it against the node's link table (which it owns: shards only follow it), and
//!    answers at once if it is invalid or changes nothing;
//! 2. checks that every shard it goes to has room in its command queue. The policy thread is
//!    the only sender on those queues, so room seen here is still there when it sends: a
//!    command reaches all of its shards or waits (held, retried every
//!    [`SHARD_QUEUE_RETRY`](crate::policy::SHARD_QUEUE_RETRY)) for all of them, never only
//!    some. While one is held, no other is taken, so commands keep their order;
//! 3. writes the XDP maps (a new link, a removed link, a left stream part, a policy update);
//! 4. records the change in the link table and sends the command to its shards.
//!
//! Each shard answers with a [`ShardAck`]. When the last one arrives, [`Conductor::on_ack`]
//! finishes the XDP side (a joined stream part enters the `joined` map only once its shard
//! carries it) and sends the [`Response`] with the first error any shard gave.
//!
//! # Limits
//! The acknowledgement queue holds [`COMMANDS_IN_FLIGHT_MAX`] acks per shard, so a shard never
//! finds it full. A shard that stops with commands in flight leaves them unanswered.

use crate::command::{
    Command, CommandCounter, CommandCounters, CommandError, CommandId, Response, COMMANDS_IN_FLIGHT_MAX, RESPONSE_QUEUE_LENGTH_MAX,
};
use crate::config::{shard_of, validate_link, LINKS_MAX};
use crate::policy::{apply_to_xdp, set_xdp_link};
use crate::shard::{ShardAck, ShardCommand};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use runnel_core::link::LinkConfig;
use runnel_ebpf::{XdpError, XdpFilter};
use runnel_proto::stream::StreamPartKey;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// A command sent to its shards and not yet answered.
struct Pending {
    /// Shards that have not acknowledged it yet.
    shards_left: usize,
    /// The first error a shard reported.
    error: Option<CommandError>,
    /// A `Join`'s stream part, for the XDP `joined` map once its shard has joined.
    join: Option<StreamPartKey>,
}

/// The conductor's state; see the module doc.
pub(crate) struct Conductor {
    pub(crate) commands_in: Receiver<(CommandId, Command)>,
    pub(crate) acks_in: Receiver<ShardAck>,
    responses_out: Sender<Response>,
    counters: Arc<CommandCounters>,
    /// Every link of the node, as the shards have it once the commands in flight are applied.
    links: HashMap<u32, LinkConfig>,
    /// The ids of the links commands added (not the config file's), shared with
    /// [`crate::node::NodeHandle::commanded_links`]: what a new control process inherits.
    commanded: Arc<Mutex<BTreeSet<u32>>>,
    pending: HashMap<CommandId, Pending>,
    /// A command waiting for room in a shard's command queue.
    held: Option<(CommandId, Command)>,
}

impl Conductor {
    pub(crate) fn new(
        commands_in: Receiver<(CommandId, Command)>,
        acks_in: Receiver<ShardAck>,
        responses_out: Sender<Response>,
        counters: Arc<CommandCounters>,
        links: &[LinkConfig],
        commanded: Arc<Mutex<BTreeSet<u32>>>,
    ) -> Self {
        let links = links.iter().map(|link| (link.id, link.clone())).collect();
        Self { commands_in, acks_in, responses_out, counters, links, commanded, pending: HashMap::new(), held: None }
    }

    /// May another command be taken? Not while one is held (order), not beyond
    /// [`COMMANDS_IN_FLIGHT_MAX`], and only while every command taken and not answered has room
    /// for its response in the response queue — so a response is never dropped.
    pub(crate) fn can_take(&self) -> bool {
        self.held.is_none()
            && self.pending.len() < COMMANDS_IN_FLIGHT_MAX
            && self.responses_out.len() + self.pending.len() < RESPONSE_QUEUE_LENGTH_MAX
    }

    /// Is a command waiting for room in a shard's queue?
    pub(crate) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Takes one command from the node's queue (only when [`Self::can_take`]).
    pub(crate) fn take(&mut self, id: CommandId, command: Command, xdp: &mut Option<XdpFilter>, shards: &[Sender<ShardCommand>]) {
        debug_assert!(self.can_take());
        if let Some(command) = self.dispatch(id, command, xdp, shards) {
            self.counters.increment(CommandCounter::WaitedForShardQueue);
            self.held = Some((id, command));
        }
    }

    /// Tries the held command again, if there is one.
    pub(crate) fn retry_held(&mut self, xdp: &mut Option<XdpFilter>, shards: &[Sender<ShardCommand>]) {
        if let Some((id, command)) = self.held.take() {
            self.held = self.dispatch(id, command, xdp, shards).map(|command| (id, command));
        }
    }

    /// Checks, routes and sends one command, or answers it at once; gives it back when a
    /// shard it goes to has no room in its queue.
    fn dispatch(
        &mut self,
        id: CommandId,
        command: Command,
        xdp: &mut Option<XdpFilter>,
        shards: &[Sender<ShardCommand>],
    ) -> Option<Command> {
        let targets = match self.route(&command, shards.len()) {
            Ok(Some(targets)) => targets,
            Ok(None) => {
                self.respond(id, Ok(()));
                return None;
            }
            Err(error) => {
                self.respond(id, Err(error));
                return None;
            }
        };
        if !shards[targets.clone()].iter().all(has_room) {
            return Some(command);
        }
        if let Some(xdp) = xdp {
            if let Err(error) = xdp_before_shards(xdp, &command) {
                self.respond(id, Err(CommandError::Xdp { reason: error.to_string() }));
                return None;
            }
        }
        self.record(&command);
        let join = match command {
            Command::Join { part } => Some(part),
            _ => None,
        };
        let mut pending = Pending { shards_left: 0, error: None, join };
        for shard in targets {
            match shards[shard].try_send(ShardCommand::Apply { id, command: command.clone() }) {
                Ok(()) => pending.shards_left += 1,
                Err(TrySendError::Full(_)) => {
                    panic!("shard {shard}'s command queue filled after the room check: the policy thread must be its only sender")
                }
                Err(TrySendError::Disconnected(_)) => {
                    pending.error.get_or_insert(CommandError::ShardStopped { shard: shard as u16 });
                }
            }
        }
        if pending.shards_left == 0 {
            self.respond(id, Err(pending.error.unwrap_or(CommandError::Stopped)));
        } else {
            self.pending.insert(id, pending);
        }
        None
    }

    /// The shards a command goes to; `None` when it changes nothing (answered `Ok` at once);
    /// an error when it is refused.
    fn route(&self, command: &Command, shard_count: usize) -> Result<Option<Range<usize>>, CommandError> {
        let all = 0..shard_count;
        match command {
            Command::AddLink(link) => {
                validate_link(link, "AddLink").map_err(|error| CommandError::InvalidLink { link_id: link.id, reason: error.0 })?;
                match self.links.get(&link.id) {
                    Some(existing) if existing == link => Ok(None),
                    Some(_) => Err(CommandError::LinkExists { link_id: link.id }),
                    None if self.links.len() >= LINKS_MAX => Err(CommandError::TooManyLinks { limit: LINKS_MAX }),
                    None => Ok(Some(all)),
                }
            }
            Command::RemoveLink { link_id } if !self.links.contains_key(link_id) => Err(CommandError::UnknownLink { link_id: *link_id }),
            Command::RemoveLink { .. } | Command::Policy(_) => Ok(Some(all)),
            Command::Join { part } | Command::Leave { part } => {
                let owner = shard_of(part, shard_count as u16) as usize;
                Ok(Some(owner..owner + 1))
            }
        }
    }

    /// Updates the link table for a command about to be sent.
    fn record(&mut self, command: &Command) {
        match command {
            Command::AddLink(link) => {
                self.links.insert(link.id, link.clone());
                self.commanded.lock().unwrap_or_else(|e| e.into_inner()).insert(link.id);
            }
            Command::RemoveLink { link_id } => {
                self.links.remove(link_id);
                self.commanded.lock().unwrap_or_else(|e| e.into_inner()).remove(link_id);
            }
            Command::Join { .. } | Command::Leave { .. } | Command::Policy(_) => {}
        }
    }

    /// One shard's answer; the last one completes the command.
    pub(crate) fn on_ack(&mut self, ack: ShardAck, xdp: &mut Option<XdpFilter>) {
        let pending = self.pending.get_mut(&ack.id).expect("a shard answers each command it was sent exactly once");
        pending.shards_left -= 1;
        if let Err(error) = ack.result {
            pending.error.get_or_insert(error);
        }
        if pending.shards_left > 0 {
            return;
        }
        let pending = self.pending.remove(&ack.id).expect("present");
        let mut result = pending.error.map_or(Ok(()), Err);
        if let (Ok(()), Some(part), Some(xdp)) = (&result, pending.join, xdp.as_mut()) {
            if let Err(error) = xdp.join(part.0) {
                let reason = format!("the shard joined the stream part, but the XDP joined map refused it ({error}): retry Join");
                result = Err(CommandError::Xdp { reason });
            }
        }
        self.respond(ack.id, result);
    }

    fn respond(&mut self, id: CommandId, result: Result<(), CommandError>) {
        self.counters.increment(if result.is_ok() { CommandCounter::Succeeded } else { CommandCounter::Failed });
        // Disconnected: the node handle is gone, nobody is waiting.
        if let Err(TrySendError::Full(_)) = self.responses_out.try_send(Response { id, result }) {
            panic!("the response queue is full, though a command is only taken with room for its response");
        }
    }

    /// At stop: answers `Stopped` to every command owed a response, and to those still
    /// queued while the response queue has room.
    pub(crate) fn shut_down(&mut self) {
        let owed: Vec<CommandId> = self.pending.drain().map(|(id, _)| id).chain(self.held.take().map(|(id, _)| id)).collect();
        for id in owed {
            self.respond(id, Err(CommandError::Stopped));
        }
        while self.responses_out.len() < RESPONSE_QUEUE_LENGTH_MAX {
            let Ok((id, _)) = self.commands_in.try_recv() else { break };
            self.respond(id, Err(CommandError::Stopped));
        }
    }
}

/// Does this shard's command queue have room for one more command?
fn has_room(shard: &Sender<ShardCommand>) -> bool {
    shard.capacity().is_none_or(|capacity| shard.len() < capacity)
}

/// The XDP maps' part of a command, done before the shards see it: a datagram the kernel
/// passes for a link or stream part that a shard does not know yet is dropped by the shard's
/// own filter, so this order never lets through what either filter should drop.
fn xdp_before_shards(xdp: &mut XdpFilter, command: &Command) -> Result<(), XdpError> {
    match command {
        Command::AddLink(link) => set_xdp_link(xdp, link),
        Command::RemoveLink { link_id } => xdp.remove_link(*link_id),
        Command::Leave { part } => xdp.leave(part.0),
        Command::Policy(update) => apply_to_xdp(xdp, update),
        // Enters the joined map once its shard has joined (`on_ack`).
        Command::Join { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use runnel_core::link::LinkRole;
    use runnel_proto::linktag::LinkKey;

    struct Harness {
        conductor: Conductor,
        shards: Vec<Sender<ShardCommand>>,
        shard_queues: Vec<Receiver<ShardCommand>>,
        responses: Receiver<Response>,
        next_id: u64,
    }

    /// A conductor with `shard_count` shard queues of `queue_length` commands, no XDP.
    fn harness(shard_count: usize, queue_length: usize) -> Harness {
        let (_commands, commands_in) = bounded(1);
        let (_acks, acks_in) = bounded(1);
        let (responses_out, responses) = bounded(RESPONSE_QUEUE_LENGTH_MAX);
        let conductor = Conductor::new(commands_in, acks_in, responses_out, Arc::default(), &[], Arc::default());
        let (shards, shard_queues) = (0..shard_count).map(|_| bounded(queue_length)).unzip();
        Harness { conductor, shards, shard_queues, responses, next_id: 1 }
    }

    impl Harness {
        fn take(&mut self, command: Command) -> CommandId {
            let id = CommandId(self.next_id);
            self.next_id += 1;
            self.conductor.take(id, command, &mut None, &self.shards);
            id
        }

        /// Has every shard apply what it was sent and acknowledge it with `result`.
        fn apply_all(&mut self, result: Result<(), CommandError>) {
            for queue in &self.shard_queues {
                while let Ok(ShardCommand::Apply { id, .. }) = queue.try_recv() {
                    self.conductor.on_ack(ShardAck { id, result: result.clone() }, &mut None);
                }
            }
        }
    }

    fn client(id: u32, key: u8) -> LinkConfig {
        LinkConfig {
            id,
            peer_link_id: None,
            key: LinkKey([key; 32]),
            role: LinkRole::Client,
            peer: None,
            peer_shards: 1,
            rate_datagrams_per_s: 0,
            burst_datagrams: 1,
        }
    }

    // Goal: a link command goes to every shard and is answered once, after the last shard's
    // ack; an identical AddLink is answered Ok at once without reaching a shard; a different
    // one under the same id, an invalid link and an unknown RemoveLink are refused with
    // their error, also without reaching a shard.
    #[test]
    fn link_commands_are_checked_routed_and_answered_once() {
        let mut h = harness(2, 8);
        let add = h.take(Command::AddLink(client(7, 1)));
        assert!(h.responses.is_empty(), "answered only once the shards have applied it");
        assert!(h.shard_queues.iter().all(|queue| queue.len() == 1), "sent to every shard");
        h.apply_all(Ok(()));
        assert_eq!(h.responses.try_recv().unwrap(), Response { id: add, result: Ok(()) });

        let same = h.take(Command::AddLink(client(7, 1)));
        assert_eq!(h.responses.try_recv().unwrap(), Response { id: same, result: Ok(()) });
        let other = h.take(Command::AddLink(client(7, 2)));
        assert_eq!(h.responses.try_recv().unwrap().result, Err(CommandError::LinkExists { link_id: 7 }));
        let mut neighbor_without_peer = client(8, 1);
        neighbor_without_peer.role = LinkRole::Neighbor;
        h.take(Command::AddLink(neighbor_without_peer));
        let invalid = h.responses.try_recv().unwrap().result.unwrap_err();
        assert!(invalid.to_string().contains("AddLink.peer"), "{invalid}");
        h.take(Command::RemoveLink { link_id: 9 });
        assert_eq!(h.responses.try_recv().unwrap().result, Err(CommandError::UnknownLink { link_id: 9 }));
        assert!(h.shard_queues.iter().all(|queue| queue.is_empty()), "refused commands reach no shard");
        assert!(other > same);

        let remove = h.take(Command::RemoveLink { link_id: 7 });
        h.apply_all(Ok(()));
        assert_eq!(h.responses.try_recv().unwrap(), Response { id: remove, result: Ok(()) });
    }

    // Goal: a join goes to the owning shard only, and a shard's error is the response.
    #[test]
    fn joins_go_to_the_owner_and_carry_its_error() {
        let mut h = harness(2, 8);
        let part = StreamPartKey([5; 32]);
        let owner = shard_of(&part, 2) as usize;
        let leave = h.take(Command::Leave { part });
        assert_eq!((h.shard_queues[owner].len(), h.shard_queues[1 - owner].len()), (1, 0));
        let error = CommandError::NotJoined { part, shard: owner as u16 };
        h.apply_all(Err(error.clone()));
        assert_eq!(h.responses.try_recv().unwrap(), Response { id: leave, result: Err(error) });
    }

    // Goal: a command for a shard whose queue is full waits (none of its shards gets it, no
    // later command overtakes it) and goes out, whole, once there is room.
    #[test]
    fn a_full_shard_queue_holds_the_command_for_all_shards() {
        let mut h = harness(2, 1);
        h.shards[1].try_send(ShardCommand::ExpireFilter).unwrap();
        let add = h.take(Command::AddLink(client(3, 1)));
        assert!(h.conductor.is_holding() && !h.conductor.can_take());
        assert!(h.shard_queues[0].is_empty(), "not sent to shard 0 alone");
        h.conductor.retry_held(&mut None, &h.shards);
        assert!(h.conductor.is_holding());
        assert_eq!(h.shard_queues[1].try_recv().unwrap(), ShardCommand::ExpireFilter);
        h.conductor.retry_held(&mut None, &h.shards);
        assert!(!h.conductor.is_holding() && h.conductor.can_take());
        h.apply_all(Ok(()));
        assert_eq!(h.responses.try_recv().unwrap(), Response { id: add, result: Ok(()) });
        assert_eq!(h.conductor.counters.get(CommandCounter::WaitedForShardQueue), 1);
    }

    // Goal: the conductor stops taking commands while the unread responses plus the
    // commands in flight fill the response queue, so no response is ever dropped.
    #[test]
    fn no_command_is_taken_without_room_for_its_response() {
        let mut h = harness(1, RESPONSE_QUEUE_LENGTH_MAX);
        let mut taken = 0;
        while h.conductor.can_take() {
            h.take(Command::RemoveLink { link_id: 1 }); // refused: answered at once
            taken += 1;
        }
        assert_eq!(taken, RESPONSE_QUEUE_LENGTH_MAX);
        h.responses.try_recv().unwrap();
        assert!(h.conductor.can_take());
        while h.conductor.can_take() {
            h.take(Command::Policy(runnel_core::filter::FilterUpdate::ReleaseLink { link_id: 1 }));
        }
        assert_eq!(h.conductor.pending.len(), 1, "in flight counts against the response queue too");
    }
}
