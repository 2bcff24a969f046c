//! The per-stream-part neighbor overlay as a state machine: which peers are neighbors, which
//! proposals are in flight, which providers are candidates, and what each handshake message
//! does to that. Sans-I/O: messages and time come in as arguments, messages to send and
//! events for the dataplane go out as return values, so every rule is unit-tested without
//! sockets (the tests at the bottom) and the driver (`driver.rs`) is only glue.
//!
//! **Rules.**
//! - A node proposes while `neighbors + proposals in flight < degree_target` and accepts
//!   while `neighbors < degree_max` (DESIGN §1: target 4, max 8).
//! - Both sides proposing to each other at once: the proposal of the lower PeerId wins; the
//!   higher one's is refused with `Conflict`.
//! - A Propose from a peer that is already a neighbor replaces the old link (the peer lost its
//!   state, e.g. restarted with the same key before we saw its old connection close), and so
//!   does an Accept from one: both sides always end on the newest handshake's link. The
//!   exception is a Propose that crossed ours: from the neighbor of a link we proposed that
//!   came up less than `crossing_window` ago; it is refused with `Conflict`, so a simultaneous
//!   start does not make, drop and remake the link.
//! - A neighbor that disconnects or sends Leave is dropped (`NeighborDown`), and the part is
//!   below target again, so the driver proposes to another candidate at its next tick.
//! - A candidate that refused is retried after `retry_after_refusal`, one whose proposal
//!   failed (dial error, timeout) after `retry_after_failure`; after
//!   [`CANDIDATE_FAILURES_MAX`] failures in a row it is forgotten until a provider lookup
//!   names it again.
//!
//! **Randomness.** Which due candidates get proposals is random, from the `StdRng` the
//! overlay is given: seeded from the OS by the driver, from a run's seed by a simulation
//! (`runnel bench sim`), which then replays exactly. The ephemeral X25519 keys are not drawn
//! from it: they stay the OS's, and no rule depends on their bytes.
//!
//! **Bounds.** At most `stream_parts_max` parts, `degree_max` neighbors and `degree_target`
//! proposals per part, `candidates_per_part_max` candidates per part (more are dropped and
//! counted); link ids for all of them exist ([`LinkIds`]).

use crate::handshake::{derive_link_key, validate_endpoint, Ephemeral, LinkIds, Transcript};
use crate::wire::{Accept, Endpoint, Leave, Propose, RefuseReason, Response};
use crate::{NeighborDown, NeighborUp, PeeringEvent};
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use runnel_proto::stream::StreamPartKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Failed proposals in a row after which a candidate is forgotten.
pub const CANDIDATE_FAILURES_MAX: u8 = 3;

#[derive(Clone, Debug)]
pub struct OverlayConfig {
    pub degree_target: usize,
    pub degree_max: usize,
    pub stream_parts_max: usize,
    pub candidates_per_part_max: usize,
    pub retry_after_refusal: Duration,
    pub retry_after_failure: Duration,
    /// How long after a link we proposed came up a Propose from the same neighbor counts as
    /// one that crossed ours (refused with Conflict) rather than one from a peer that lost
    /// its state (which replaces the link): the longest a request can be in flight.
    pub crossing_window: Duration,
    /// How long a neighbor whose libp2p connection closed keeps its dataplane link: its
    /// control process may be restarting while its dataplane forwards. It no longer counts
    /// toward the target degree (replacements are sought at once); it is dropped when the
    /// dataplane finds it silent, a new handshake replaces it, or this time has passed.
    pub disconnected_grace: Duration,
    pub link_ids: RangeInclusive<u32>,
}

impl OverlayConfig {
    /// Link ids that can be live at once: every neighbor, and every proposal in flight
    /// (which may outlive a leave of its part until it is answered).
    pub fn link_ids_max(&self) -> usize {
        self.stream_parts_max * (self.degree_max + 2 * self.degree_target)
    }
}

/// A neighbor as the caller sees it (`PeeringHandle::neighbors`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborInfo {
    pub peer: PeerId,
    pub local_link_id: u32,
    pub remote_link_id: u32,
    pub remote_endpoint: SocketAddr,
    pub remote_shards: u16,
    /// Whether this node proposed the link (and the neighbor accepted).
    pub initiated_locally: bool,
    pub since: Instant,
    /// When the peer's last libp2p connection closed; `None` while connected.
    pub disconnected_since: Option<Instant>,
}

impl NeighborInfo {
    pub fn is_connected(&self) -> bool {
        self.disconnected_since.is_none()
    }
}

struct Candidate {
    retry_at: Instant,
    failures: u8,
}

struct Proposal {
    local_link_id: u32,
    ephemeral: Ephemeral,
}

#[derive(Default)]
struct PartState {
    neighbors: HashMap<PeerId, NeighborInfo>,
    proposals: HashMap<PeerId, Proposal>,
    candidates: HashMap<PeerId, Candidate>,
}

impl PartState {
    fn connected(&self) -> usize {
        self.neighbors.values().filter(|neighbor| neighbor.is_connected()).count()
    }
}

/// Why a stream part could not be joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayError {
    TooManyParts { max: usize },
}

/// The overlay of every joined stream part of one node.
pub struct Overlay {
    local: PeerId,
    endpoint: Endpoint,
    config: OverlayConfig,
    parts: HashMap<StreamPartKey, PartState>,
    link_ids: LinkIds,
    /// Picks the candidates to propose to ([`Overlay::start_proposals`]).
    rng: StdRng,
    /// Candidates not kept because a part had `candidates_per_part_max` already.
    pub candidates_dropped: u64,
}

impl Overlay {
    pub fn new(local: PeerId, endpoint: Endpoint, config: OverlayConfig, link_id_start: u32, rng: StdRng) -> Self {
        let link_ids = LinkIds::new(config.link_ids.clone(), config.link_ids_max(), link_id_start);
        Self { local, endpoint, config, parts: HashMap::new(), link_ids, rng, candidates_dropped: 0 }
    }

    pub fn is_joined(&self, part: &StreamPartKey) -> bool {
        self.parts.contains_key(part)
    }

    pub fn parts(&self) -> impl Iterator<Item = &StreamPartKey> {
        self.parts.keys()
    }

    /// Joins `part`; `Ok(false)` when it was joined already.
    pub fn join(&mut self, part: StreamPartKey) -> Result<bool, OverlayError> {
        if self.parts.contains_key(&part) {
            return Ok(false);
        }
        if self.parts.len() >= self.config.stream_parts_max {
            return Err(OverlayError::TooManyParts { max: self.config.stream_parts_max });
        }
        self.parts.insert(part, PartState::default());
        Ok(true)
    }

    /// Leaves `part`: every neighbor goes down (`events`), and the Leave messages to send to
    /// them are returned. Proposals in flight are forgotten; an Accept that still arrives for
    /// one is answered with a Leave ([`Overlay::handle_reply`]).
    pub fn leave(&mut self, part: &StreamPartKey, events: &mut Vec<PeeringEvent>) -> Vec<(PeerId, Leave)> {
        let Some(state) = self.parts.remove(part) else { return Vec::new() };
        for proposal in state.proposals.values() {
            self.link_ids.release(proposal.local_link_id);
        }
        let mut leaves = Vec::with_capacity(state.neighbors.len());
        for neighbor in state.neighbors.into_values() {
            self.link_ids.release(neighbor.local_link_id);
            leaves.push((neighbor.peer, Leave { part: part.0, link_id: neighbor.local_link_id }));
            events.push(down(*part, neighbor.peer, neighbor.local_link_id));
        }
        leaves
    }

    /// Parts with fewer connected neighbors than the target.
    pub fn parts_below_target(&self) -> Vec<StreamPartKey> {
        self.parts.iter().filter(|(_, state)| state.connected() < self.config.degree_target).map(|(part, _)| *part).collect()
    }

    pub fn neighbors(&self, part: &StreamPartKey) -> Vec<NeighborInfo> {
        self.parts.get(part).map(|state| state.neighbors.values().cloned().collect()).unwrap_or_default()
    }

    /// Connected neighbors of `part` (those waiting out [`OverlayConfig::disconnected_grace`]
    /// are not counted).
    pub fn degree(&self, part: &StreamPartKey) -> usize {
        self.parts.get(part).map_or(0, PartState::connected)
    }

    /// Every neighbor of every part, as (part, peer).
    pub fn all_neighbors(&self) -> Vec<(StreamPartKey, PeerId)> {
        self.parts.iter().flat_map(|(part, state)| state.neighbors.keys().map(move |peer| (*part, *peer))).collect()
    }

    pub fn is_neighbor_anywhere(&self, peer: &PeerId) -> bool {
        self.parts.values().any(|state| state.neighbors.contains_key(peer))
    }

    /// Adds providers found for `part` as candidates (not ourselves, not current
    /// neighbors); a known candidate keeps its retry time.
    pub fn add_candidates(&mut self, part: &StreamPartKey, peers: impl IntoIterator<Item = PeerId>, now: Instant) {
        let Some(state) = self.parts.get_mut(part) else { return };
        for peer in peers {
            if peer == self.local || state.neighbors.contains_key(&peer) || state.candidates.contains_key(&peer) {
                continue;
            }
            if state.candidates.len() >= self.config.candidates_per_part_max {
                self.candidates_dropped += 1;
                continue;
            }
            state.candidates.insert(peer, Candidate { retry_at: now, failures: 0 });
        }
    }

    pub fn candidate_count(&self, part: &StreamPartKey) -> usize {
        self.parts.get(part).map_or(0, |state| state.candidates.len())
    }

    /// Proposals to send now for `part`: to random due candidates, as many as bring
    /// neighbors plus proposals in flight up to the target. `accepting` false (the event
    /// queue is full) sends none.
    pub fn start_proposals(&mut self, part: &StreamPartKey, now: Instant, accepting: bool) -> Vec<(PeerId, Propose)> {
        let Some(state) = self.parts.get_mut(part) else { return Vec::new() };
        let busy = state.connected() + state.proposals.len();
        if !accepting || busy >= self.config.degree_target {
            return Vec::new();
        }
        let mut due: Vec<PeerId> = state
            .candidates
            .iter()
            .filter(|(peer, candidate)| {
                candidate.retry_at <= now && !state.neighbors.contains_key(*peer) && !state.proposals.contains_key(*peer)
            })
            .map(|(peer, _)| *peer)
            .collect();
        // A HashMap's order differs per process: sorted first, the shuffle depends on the rng alone.
        due.sort_unstable();
        due.shuffle(&mut self.rng);
        due.truncate(self.config.degree_target - busy);
        let mut proposals = Vec::with_capacity(due.len());
        for peer in due {
            let Some(local_link_id) = self.link_ids.allocate() else { break };
            let ephemeral = Ephemeral::generate();
            let propose = Propose { part: part.0, link_id: local_link_id, endpoint: self.endpoint, ephemeral_public: ephemeral.public() };
            state.proposals.insert(peer, Proposal { local_link_id, ephemeral });
            // Until the outcome is known, do not pick it again.
            if let Some(candidate) = state.candidates.get_mut(&peer) {
                candidate.retry_at = now + self.config.retry_after_failure;
            }
            proposals.push((peer, propose));
        }
        proposals
    }

    /// The responder's side: answers a Propose from `peer`. `accepting` false (the event
    /// queue to the dataplane is full) refuses with `Busy`.
    pub fn handle_propose(
        &mut self,
        peer: PeerId,
        propose: &Propose,
        accepting: bool,
        now: Instant,
        events: &mut Vec<PeeringEvent>,
    ) -> Response {
        let part = StreamPartKey(propose.part);
        let Some(state) = self.parts.get_mut(&part) else { return Response::Refuse(RefuseReason::NotJoined) };
        if validate_endpoint(&propose.endpoint).is_err() || peer == self.local {
            return Response::Refuse(RefuseReason::Invalid);
        }
        if state.proposals.contains_key(&peer) && self.local < peer {
            return Response::Refuse(RefuseReason::Conflict);
        }
        let existing = state.neighbors.get(&peer);
        if existing.is_some_and(|link| {
            link.is_connected() && link.initiated_locally && now.duration_since(link.since) < self.config.crossing_window
        }) {
            return Response::Refuse(RefuseReason::Conflict);
        }
        let replacing = existing.is_some();
        if !replacing && state.neighbors.len() >= self.config.degree_max {
            return Response::Refuse(RefuseReason::Full);
        }
        if !accepting {
            return Response::Refuse(RefuseReason::Busy);
        }
        let Some(local_link_id) = self.link_ids.allocate() else { return Response::Refuse(RefuseReason::Busy) };
        let ephemeral = Ephemeral::generate();
        let public = ephemeral.public();
        let transcript = Transcript {
            initiator: &peer,
            responder: &self.local,
            part: &propose.part,
            initiator_link_id: propose.link_id,
            responder_link_id: local_link_id,
            initiator_public: &propose.ephemeral_public,
            responder_public: &public,
        };
        let Some(key) = derive_link_key(ephemeral, &propose.ephemeral_public, &transcript) else {
            self.link_ids.release(local_link_id);
            return Response::Refuse(RefuseReason::Invalid);
        };
        if let Some(old) = state.neighbors.remove(&peer) {
            self.link_ids.release(old.local_link_id);
            events.push(down(part, peer, old.local_link_id));
        }
        let neighbor = NeighborInfo {
            peer,
            local_link_id,
            remote_link_id: propose.link_id,
            remote_endpoint: propose.endpoint.address,
            remote_shards: propose.endpoint.shards,
            initiated_locally: false,
            since: now,
            disconnected_since: None,
        };
        events.push(up(part, &neighbor, key));
        state.neighbors.insert(peer, neighbor);
        Response::Accept(Accept { link_id: local_link_id, endpoint: self.endpoint, ephemeral_public: public })
    }

    /// The initiator's side: the answer to the proposal with `local_link_id` to `peer` for
    /// `part`. Returns a Leave to send when an Accept cannot be used (the part was left, the
    /// proposal superseded, the degree reached its maximum meanwhile, a bad key or endpoint).
    pub fn handle_reply(
        &mut self,
        part: &StreamPartKey,
        peer: PeerId,
        local_link_id: u32,
        response: &Response,
        now: Instant,
        events: &mut Vec<PeeringEvent>,
    ) -> Option<Leave> {
        let leave = || match response {
            Response::Accept(_) => Some(Leave { part: part.0, link_id: local_link_id }),
            _ => None,
        };
        let Some(state) = self.parts.get_mut(part) else { return leave() };
        if state.proposals.get(&peer).is_none_or(|proposal| proposal.local_link_id != local_link_id) {
            return leave();
        }
        let proposal = state.proposals.remove(&peer).expect("checked above");
        let accept = match response {
            Response::Accept(accept) => accept,
            Response::Refuse(_) => {
                self.link_ids.release(local_link_id);
                // Conflict included: the crossing proposal that won made the link already.
                if let Some(candidate) = state.candidates.get_mut(&peer) {
                    candidate.retry_at = now + self.config.retry_after_refusal;
                }
                return None;
            }
            Response::LeaveAck | Response::ClientGrant(_) => {
                // Not an answer to a Propose: the peer misbehaves.
                self.link_ids.release(local_link_id);
                Self::candidate_failed(state, &peer, now, &self.config);
                return None;
            }
        };
        let replacing = state.neighbors.contains_key(&peer);
        let public = proposal.ephemeral.public();
        let transcript = Transcript {
            initiator: &self.local,
            responder: &peer,
            part: &part.0,
            initiator_link_id: local_link_id,
            responder_link_id: accept.link_id,
            initiator_public: &public,
            responder_public: &accept.ephemeral_public,
        };
        let key = derive_link_key(proposal.ephemeral, &accept.ephemeral_public, &transcript);
        let usable = validate_endpoint(&accept.endpoint).is_ok() && (replacing || state.neighbors.len() < self.config.degree_max);
        let (Some(key), true) = (key, usable) else {
            self.link_ids.release(local_link_id);
            Self::candidate_failed(state, &peer, now, &self.config);
            return Some(Leave { part: part.0, link_id: local_link_id });
        };
        if let Some(old) = state.neighbors.remove(&peer) {
            self.link_ids.release(old.local_link_id);
            events.push(down(*part, peer, old.local_link_id));
        }
        if let Some(candidate) = state.candidates.get_mut(&peer) {
            candidate.failures = 0;
        }
        let neighbor = NeighborInfo {
            peer,
            local_link_id,
            remote_link_id: accept.link_id,
            remote_endpoint: accept.endpoint.address,
            remote_shards: accept.endpoint.shards,
            initiated_locally: true,
            since: now,
            disconnected_since: None,
        };
        events.push(up(*part, &neighbor, key));
        state.neighbors.insert(peer, neighbor);
        None
    }

    /// The proposal with `local_link_id` got no answer (dial failure, timeout, stream error).
    pub fn proposal_failed(&mut self, part: &StreamPartKey, peer: &PeerId, local_link_id: u32, now: Instant) {
        let Some(state) = self.parts.get_mut(part) else { return };
        if state.proposals.get(peer).is_none_or(|proposal| proposal.local_link_id != local_link_id) {
            return;
        }
        state.proposals.remove(peer);
        self.link_ids.release(local_link_id);
        Self::candidate_failed(state, peer, now, &self.config);
    }

    fn candidate_failed(state: &mut PartState, peer: &PeerId, now: Instant, config: &OverlayConfig) {
        let Some(candidate) = state.candidates.get_mut(peer) else { return };
        candidate.failures += 1;
        candidate.retry_at = now + config.retry_after_failure;
        if candidate.failures >= CANDIDATE_FAILURES_MAX {
            state.candidates.remove(peer);
        }
    }

    /// A Leave from `peer`: drops it as a neighbor of the part if the link id is the one it
    /// knows the link by. Always answered with LeaveAck.
    pub fn handle_leave(&mut self, peer: PeerId, leave: &Leave, now: Instant, events: &mut Vec<PeeringEvent>) -> Response {
        let part = StreamPartKey(leave.part);
        if let Some(state) = self.parts.get_mut(&part) {
            if state.neighbors.get(&peer).is_some_and(|neighbor| neighbor.remote_link_id == leave.link_id) {
                let neighbor = state.neighbors.remove(&peer).expect("checked above");
                self.link_ids.release(neighbor.local_link_id);
                events.push(down(part, peer, neighbor.local_link_id));
                if let Some(candidate) = state.candidates.get_mut(&peer) {
                    candidate.retry_at = now + self.config.retry_after_refusal;
                }
            }
        }
        Response::LeaveAck
    }

    /// `peer` has no connection left: where it is a neighbor it stops counting toward the
    /// target (so a replacement is sought) but keeps its link for
    /// [`OverlayConfig::disconnected_grace`] — its control process may be restarting while
    /// its dataplane forwards. It is not proposed to again before `retry_after_failure`.
    pub fn peer_disconnected(&mut self, peer: &PeerId, now: Instant) {
        for state in self.parts.values_mut() {
            if let Some(neighbor) = state.neighbors.get_mut(peer) {
                neighbor.disconnected_since.get_or_insert(now);
            }
            if let Some(candidate) = state.candidates.get_mut(peer) {
                candidate.retry_at = now + self.config.retry_after_failure;
            }
        }
    }

    /// Drops the neighbors that have been disconnected for the grace period; returns the
    /// Leaves to tell them (should they be back without having made a new link).
    pub fn expire_disconnected(&mut self, now: Instant, events: &mut Vec<PeeringEvent>) -> Vec<(PeerId, Leave)> {
        let grace = self.config.disconnected_grace;
        let mut leaves = Vec::new();
        for (part, state) in self.parts.iter_mut() {
            let expired: Vec<PeerId> = state
                .neighbors
                .values()
                .filter(|neighbor| neighbor.disconnected_since.is_some_and(|since| now.duration_since(since) >= grace))
                .map(|neighbor| neighbor.peer)
                .collect();
            for peer in expired {
                let neighbor = state.neighbors.remove(&peer).expect("listed above");
                self.link_ids.release(neighbor.local_link_id);
                events.push(down(*part, peer, neighbor.local_link_id));
                leaves.push((peer, Leave { part: part.0, link_id: neighbor.local_link_id }));
            }
        }
        leaves
    }

    /// Drops the neighbor `peer` of `part` if its link is still `local_link_id` (an Accept
    /// we sent never reached it).
    pub fn drop_neighbor(&mut self, part: &StreamPartKey, peer: &PeerId, local_link_id: u32, events: &mut Vec<PeeringEvent>) {
        let Some(state) = self.parts.get_mut(part) else { return };
        if state.neighbors.get(peer).is_some_and(|neighbor| neighbor.local_link_id == local_link_id) {
            state.neighbors.remove(peer);
            self.link_ids.release(local_link_id);
            events.push(down(*part, *peer, local_link_id));
        }
    }

    /// A neighbor the dataplane heard nothing from (missed heartbeats): dropped like a
    /// failed one — its candidate waits `retry_after_failure` (or is forgotten after
    /// [`CANDIDATE_FAILURES_MAX`]) so the replacement is another peer. Returns the peer and
    /// the Leave to tell it, if `local_link_id` is a neighbor of `part`.
    pub fn neighbor_silent(
        &mut self,
        part: &StreamPartKey,
        local_link_id: u32,
        now: Instant,
        events: &mut Vec<PeeringEvent>,
    ) -> Option<(PeerId, Leave)> {
        let state = self.parts.get_mut(part)?;
        let peer = state.neighbors.values().find(|neighbor| neighbor.local_link_id == local_link_id)?.peer;
        state.neighbors.remove(&peer);
        self.link_ids.release(local_link_id);
        events.push(down(*part, peer, local_link_id));
        Self::candidate_failed(state, &peer, now, &self.config);
        Some((peer, Leave { part: part.0, link_id: local_link_id }))
    }

    /// Live link ids (neighbors and proposals in flight).
    pub fn link_ids_live(&self) -> usize {
        self.link_ids.live()
    }
}

fn up(part: StreamPartKey, neighbor: &NeighborInfo, key: runnel_keystore::Secret) -> PeeringEvent {
    PeeringEvent::NeighborUp(NeighborUp {
        part,
        peer: neighbor.peer,
        local_link_id: neighbor.local_link_id,
        remote_link_id: neighbor.remote_link_id,
        key,
        remote_endpoint: neighbor.remote_endpoint,
        remote_shards: neighbor.remote_shards,
    })
}

fn down(part: StreamPartKey, peer: PeerId, local_link_id: u32) -> PeeringEvent {
    PeeringEvent::NeighborDown(NeighborDown { part, peer, local_link_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const PART: StreamPartKey = StreamPartKey([1; 32]);
    const OTHER_PART: StreamPartKey = StreamPartKey([2; 32]);

    fn config(target: usize, max: usize) -> OverlayConfig {
        OverlayConfig {
            degree_target: target,
            degree_max: max,
            stream_parts_max: 4,
            candidates_per_part_max: 16,
            retry_after_refusal: Duration::from_secs(5),
            retry_after_failure: Duration::from_secs(10),
            crossing_window: Duration::from_secs(10),
            disconnected_grace: Duration::from_secs(15),
            link_ids: 0x8000_0000..=u32::MAX,
        }
    }

    fn node(port: u16, target: usize, max: usize) -> Overlay {
        let endpoint = Endpoint { address: SocketAddr::from(([127, 0, 0, 1], port)), shards: 2 };
        let rng = StdRng::seed_from_u64(u64::from(port));
        let mut overlay = Overlay::new(PeerId::random(), endpoint, config(target, max), u32::from(port), rng);
        overlay.join(PART).unwrap();
        overlay
    }

    /// Runs one whole handshake from `initiator` to `responder`; returns both sides' events.
    fn handshake(initiator: &mut Overlay, responder: &mut Overlay, now: Instant) -> (Vec<PeeringEvent>, Vec<PeeringEvent>, Response) {
        initiator.add_candidates(&PART, [responder.local], now);
        let proposals = initiator.start_proposals(&PART, now, true);
        let (peer, propose) = proposals.into_iter().find(|(peer, _)| *peer == responder.local).expect("a proposal to the responder");
        assert_eq!(peer, responder.local);
        let (mut initiator_events, mut responder_events) = (Vec::new(), Vec::new());
        let response = responder.handle_propose(initiator.local, &propose, true, now, &mut responder_events);
        let leave = initiator.handle_reply(&PART, responder.local, propose.link_id, &response, now, &mut initiator_events);
        assert_eq!(leave, None);
        (initiator_events, responder_events, response)
    }

    fn only_up(events: &[PeeringEvent]) -> &NeighborUp {
        match events {
            [PeeringEvent::NeighborUp(up)] => up,
            other => panic!("expected one NeighborUp, got {other:?}"),
        }
    }

    // Goal: an accepted handshake gives both sides a NeighborUp with the same key, swapped
    // link ids and each other's endpoint.
    #[test]
    fn accepted_handshake_matches_on_both_sides() {
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        let (a_events, b_events, _) = handshake(&mut a, &mut b, Instant::now());
        let (a_up, b_up) = (only_up(&a_events), only_up(&b_events));
        assert_eq!(a_up.key.expose(), b_up.key.expose());
        assert_eq!((a_up.local_link_id, a_up.remote_link_id), (b_up.remote_link_id, b_up.local_link_id));
        assert_eq!((a_up.peer, b_up.peer), (b.local, a.local));
        assert_eq!((a_up.remote_endpoint.port(), b_up.remote_endpoint.port()), (5000, 4000));
        assert_eq!((a.degree(&PART), b.degree(&PART)), (1, 1));
        assert!(a_up.local_link_id >= 0x8000_0000);
    }

    // Goal: a neighbor the dataplane reports silent is dropped (NeighborDown, a Leave for it,
    // its link id free again) and not proposed to again before retry_after_failure, so the
    // replacement is another candidate; an unknown link id changes nothing.
    #[test]
    fn silent_neighbor_is_dropped_and_not_retried_at_once() {
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        let now = Instant::now();
        let (a_events, _, _) = handshake(&mut a, &mut b, now);
        let link = only_up(&a_events).local_link_id;
        let mut events = Vec::new();
        assert_eq!(a.neighbor_silent(&PART, link + 1, now, &mut events), None);
        assert!(events.is_empty());
        let (peer, leave) = a.neighbor_silent(&PART, link, now, &mut events).expect("a neighbor");
        assert_eq!((peer, leave.link_id), (b.local, link));
        assert!(matches!(events.as_slice(), [PeeringEvent::NeighborDown(down)] if down.local_link_id == link));
        assert_eq!((a.degree(&PART), a.link_ids_live()), (0, 0));
        assert!(a.start_proposals(&PART, now + Duration::from_secs(1), true).is_empty(), "not the silent peer again at once");
        assert_eq!(a.start_proposals(&PART, now + Duration::from_secs(11), true).len(), 1, "after retry_after_failure");
    }

    // Goal: a node with degree_max neighbors refuses with Full; one that has not joined the
    // part refuses with NotJoined; a Busy node refuses without allocating anything.
    #[test]
    fn refusals_when_full_unknown_part_or_busy() {
        let mut responder = node(4000, 1, 2);
        let now = Instant::now();
        for port in [5000, 5001] {
            let mut initiator = node(port, 1, 2);
            let (_, events, _) = handshake(&mut initiator, &mut responder, now);
            only_up(&events);
        }
        let mut third = node(5002, 1, 2);
        third.add_candidates(&PART, [responder.local], now);
        let (_, propose) = third.start_proposals(&PART, now, true).pop().unwrap();
        let mut events = Vec::new();
        assert_eq!(responder.handle_propose(third.local, &propose, true, now, &mut events), Response::Refuse(RefuseReason::Full));
        let unknown = Propose { part: OTHER_PART.0, ..propose };
        assert_eq!(responder.handle_propose(third.local, &unknown, true, now, &mut events), Response::Refuse(RefuseReason::NotJoined));
        let mut idle = node(4001, 1, 2);
        let live = idle.link_ids_live();
        assert_eq!(idle.handle_propose(third.local, &propose, false, now, &mut events), Response::Refuse(RefuseReason::Busy));
        assert_eq!(idle.link_ids_live(), live);
        assert!(events.is_empty());
        // The refused initiator releases its link id and waits before retrying.
        assert_eq!(
            third.handle_reply(&PART, responder.local, propose.link_id, &Response::Refuse(RefuseReason::Full), now, &mut events),
            None
        );
        assert_eq!(third.link_ids_live(), 0);
        assert!(third.start_proposals(&PART, now + Duration::from_secs(1), true).is_empty());
        assert_eq!(third.start_proposals(&PART, now + Duration::from_secs(6), true).len(), 1);
    }

    // Goal: malformed proposals (bad endpoint, low-order X25519 key, from ourselves) are
    // refused with Invalid and leave no state behind.
    #[test]
    fn malformed_proposals_are_refused() {
        let mut responder = node(4000, 4, 8);
        let peer = PeerId::random();
        let good = Propose {
            part: PART.0,
            link_id: 1,
            endpoint: Endpoint { address: SocketAddr::from(([127, 0, 0, 1], 9000)), shards: 1 },
            ephemeral_public: Ephemeral::generate().public(),
        };
        let bad = [
            Propose { endpoint: Endpoint { address: SocketAddr::from(([127, 0, 0, 1], 0)), shards: 1 }, ..good },
            Propose { endpoint: Endpoint { address: SocketAddr::from(([127, 0, 0, 1], 9000)), shards: 0 }, ..good },
            Propose { ephemeral_public: [0; 32], ..good },
        ];
        let mut events = Vec::new();
        for propose in bad {
            assert_eq!(
                responder.handle_propose(peer, &propose, true, Instant::now(), &mut events),
                Response::Refuse(RefuseReason::Invalid)
            );
        }
        assert_eq!(
            responder.handle_propose(responder.local, &good, true, Instant::now(), &mut events),
            Response::Refuse(RefuseReason::Invalid)
        );
        assert!(events.is_empty());
        assert_eq!((responder.degree(&PART), responder.link_ids_live()), (0, 0));
    }

    // Goal: when two nodes propose to each other at once, exactly one link results, on both
    // sides, whichever order the messages cross in.
    #[test]
    fn crossing_proposals_make_one_link() {
        let now = Instant::now();
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        if b.local < a.local {
            std::mem::swap(&mut a, &mut b);
        }
        // a < b: a's proposal wins.
        a.add_candidates(&PART, [b.local], now);
        b.add_candidates(&PART, [a.local], now);
        let (_, a_propose) = a.start_proposals(&PART, now, true).pop().unwrap();
        let (_, b_propose) = b.start_proposals(&PART, now, true).pop().unwrap();
        let (mut a_events, mut b_events) = (Vec::new(), Vec::new());
        let to_b = a.handle_propose(b.local, &b_propose, true, now, &mut a_events);
        assert_eq!(to_b, Response::Refuse(RefuseReason::Conflict));
        let to_a = b.handle_propose(a.local, &a_propose, true, now, &mut b_events);
        assert!(matches!(to_a, Response::Accept(_)));
        assert_eq!(b.handle_reply(&PART, a.local, b_propose.link_id, &to_b, now, &mut b_events), None);
        assert_eq!(a.handle_reply(&PART, b.local, a_propose.link_id, &to_a, now, &mut a_events), None);
        let (a_up, b_up) = (only_up(&a_events), only_up(&b_events));
        assert_eq!(a_up.key.expose(), b_up.key.expose());
        assert_eq!(a_up.local_link_id, b_up.remote_link_id);
        assert_eq!((a.degree(&PART), b.degree(&PART)), (1, 1));
    }

    // Goal: a Propose from a neighbor whose link we proposed moments ago crossed ours and is
    // refused (no churn); after the crossing window it means the peer lost its state, and
    // replaces the link.
    #[test]
    fn late_crossing_proposal_is_refused_not_replacing() {
        let now = Instant::now();
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        let (a_events, _, _) = handshake(&mut a, &mut b, now);
        let link = only_up(&a_events).local_link_id;
        let crossing = Propose {
            part: PART.0,
            link_id: 77,
            endpoint: Endpoint { address: SocketAddr::from(([127, 0, 0, 1], 5000)), shards: 2 },
            ephemeral_public: Ephemeral::generate().public(),
        };
        let mut events = Vec::new();
        let response = a.handle_propose(b.local, &crossing, true, now + Duration::from_secs(1), &mut events);
        assert_eq!(response, Response::Refuse(RefuseReason::Conflict));
        assert!(events.is_empty());
        assert_eq!(a.neighbors(&PART)[0].local_link_id, link);
        let response = a.handle_propose(b.local, &crossing, true, now + Duration::from_secs(11), &mut events);
        assert!(matches!(response, Response::Accept(_)));
        assert!(matches!(events.as_slice(), [PeeringEvent::NeighborDown(_), PeeringEvent::NeighborUp(_)]));
    }

    // Goal: a second handshake between neighbors (a restarted peer) replaces the link on
    // both sides: the old one goes down, the new one comes up with a new key.
    #[test]
    fn repeated_handshake_replaces_the_link() {
        let now = Instant::now();
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        let (first, _, _) = handshake(&mut a, &mut b, now);
        let first = only_up(&first);
        // a forgets b (as after a restart) and proposes again.
        let mut events = Vec::new();
        a.leave(&PART, &mut events);
        a.join(PART).unwrap();
        let (a_events, b_events, _) = handshake(&mut a, &mut b, now);
        let a_up = only_up(&a_events);
        match b_events.as_slice() {
            [PeeringEvent::NeighborDown(down), PeeringEvent::NeighborUp(up)] => {
                assert_eq!(down.local_link_id, first.remote_link_id);
                assert_eq!(up.key.expose(), a_up.key.expose());
                assert_ne!(up.key.expose(), first.key.expose());
            }
            other => panic!("expected Down then Up, got {other:?}"),
        }
        assert_eq!(b.degree(&PART), 1);
    }

    // Goal: a neighbor that leaves goes down once; a Leave naming an older link id is
    // ignored; link ids are released.
    #[test]
    fn leave_drops_neighbors() {
        let now = Instant::now();
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        let (ab, _, _) = handshake(&mut a, &mut b, now);
        let ab = only_up(&ab);
        let mut events = Vec::new();
        let stale = Leave { part: PART.0, link_id: ab.remote_link_id.wrapping_add(1) };
        assert_eq!(a.handle_leave(b.local, &stale, now, &mut events), Response::LeaveAck);
        assert!(events.is_empty());
        let leave = Leave { part: PART.0, link_id: ab.remote_link_id };
        a.handle_leave(b.local, &leave, now, &mut events);
        assert!(matches!(events.as_slice(), [PeeringEvent::NeighborDown(down)] if down.peer == b.local));
        assert_eq!((a.degree(&PART), a.link_ids_live()), (0, 0));
    }

    // Goal: a neighbor whose connection closed stops counting toward the target at once
    // (a replacement is sought) but keeps its link through the grace period — its control
    // process may be restarting while its dataplane forwards — and then goes down once, with
    // a Leave for it; one that comes back with a new handshake replaces its old link.
    #[test]
    fn disconnected_neighbors_keep_their_link_for_the_grace_period() {
        let now = Instant::now();
        let (mut a, mut b, mut c) = (node(4000, 4, 8), node(5000, 4, 8), node(6000, 4, 8));
        let (ab, _, _) = handshake(&mut a, &mut b, now);
        let ab_link = only_up(&ab).local_link_id;
        handshake(&mut a, &mut c, now);
        a.peer_disconnected(&b.local, now);
        a.peer_disconnected(&c.local, now);
        assert_eq!((a.degree(&PART), a.neighbors(&PART).len(), a.link_ids_live()), (0, 2, 2));
        assert_eq!(a.parts_below_target(), vec![PART]);
        assert!(a.neighbors(&PART).iter().all(|neighbor| !neighbor.is_connected()));

        // c restarted (it lost its state) and proposes again: the new link replaces the old.
        let endpoint = Endpoint { address: SocketAddr::from(([127, 0, 0, 1], 6000)), shards: 2 };
        let mut c = Overlay::new(c.local, endpoint, config(4, 8), 7, StdRng::seed_from_u64(7));
        c.join(PART).unwrap();
        let later = now + Duration::from_secs(1);
        let (c_events, a_events, _) = handshake(&mut c, &mut a, later);
        only_up(&c_events);
        assert!(
            matches!(a_events.as_slice(), [PeeringEvent::NeighborDown(down), PeeringEvent::NeighborUp(up)] if down.peer == c.local && up.peer == c.local)
        );
        assert_eq!(a.degree(&PART), 1, "the new link to c is connected");

        // Within the grace period nothing expires; after it, b goes down once.
        let mut events = Vec::new();
        let grace = config(4, 8).disconnected_grace;
        assert!(a.expire_disconnected(now + grace - Duration::from_millis(1), &mut events).is_empty());
        assert!(events.is_empty());
        let leaves = a.expire_disconnected(now + grace, &mut events);
        assert_eq!(leaves, vec![(b.local, Leave { part: PART.0, link_id: ab_link })]);
        assert!(matches!(events.as_slice(), [PeeringEvent::NeighborDown(down)] if down.peer == b.local && down.local_link_id == ab_link));
        events.clear();
        assert!(a.expire_disconnected(now + grace * 2, &mut events).is_empty());
        assert_eq!((a.degree(&PART), a.neighbors(&PART).len(), a.link_ids_live()), (1, 1, 1));
    }

    // Goal: an Accept that arrives after the part was left, or that would exceed the
    // maximum degree, is answered with a Leave and makes no neighbor.
    #[test]
    fn unusable_accept_is_answered_with_leave() {
        let now = Instant::now();
        let (mut a, mut b) = (node(4000, 4, 8), node(5000, 4, 8));
        a.add_candidates(&PART, [b.local], now);
        let (_, propose) = a.start_proposals(&PART, now, true).pop().unwrap();
        let mut events = Vec::new();
        let response = b.handle_propose(a.local, &propose, true, now, &mut events);
        let mut a_events = Vec::new();
        a.leave(&PART, &mut a_events);
        let leave = a.handle_reply(&PART, b.local, propose.link_id, &response, now, &mut a_events);
        assert_eq!(leave, Some(Leave { part: PART.0, link_id: propose.link_id }));
        assert!(a_events.is_empty());
        events.clear();
        b.handle_leave(a.local, &leave.unwrap(), now, &mut events);
        assert_eq!(b.degree(&PART), 0);
        assert_eq!(a.link_ids_live(), 0);
    }

    // Goal: the choice of candidates depends on the rng's seed alone, not on the order the
    // candidates came in (nor on a HashMap's per-process order): a simulation replays it.
    #[test]
    fn proposals_follow_the_seed() {
        let now = Instant::now();
        // Fewer than candidates_per_part_max, so both orders keep them all.
        let peers: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let chosen = |order: &mut dyn Iterator<Item = PeerId>| {
            let mut overlay = node(4000, 4, 8);
            overlay.add_candidates(&PART, order, now);
            let mut chosen: Vec<PeerId> = overlay.start_proposals(&PART, now, true).into_iter().map(|(peer, _)| peer).collect();
            chosen.sort_unstable();
            chosen
        };
        let forward = chosen(&mut peers.iter().copied());
        assert_eq!(forward.len(), 4);
        assert_eq!(chosen(&mut peers.iter().rev().copied()), forward);
    }

    // Goal: proposals stop at the target; failures back off and a candidate that keeps
    // failing is forgotten; stream parts and candidates are bounded.
    #[test]
    fn proposals_are_bounded_and_back_off() {
        let now = Instant::now();
        let mut a = node(4000, 2, 3);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        a.add_candidates(&PART, peers.iter().copied(), now);
        let proposals = a.start_proposals(&PART, now, true);
        assert_eq!(proposals.len(), 2);
        assert!(a.start_proposals(&PART, now, true).is_empty(), "target reached with proposals in flight");
        let (peer, propose) = proposals[0];
        let mut later = now;
        a.proposal_failed(&PART, &peer, propose.link_id, later);
        for _ in 1..CANDIDATE_FAILURES_MAX {
            later += Duration::from_secs(11);
            let again = loop {
                let batch = a.start_proposals(&PART, later, true);
                if let Some(found) = batch.iter().find(|(candidate, _)| *candidate == peer) {
                    break *found;
                }
                for (other, propose) in batch {
                    a.proposal_failed(&PART, &other, propose.link_id, later);
                }
                later += Duration::from_secs(11);
            };
            a.proposal_failed(&PART, &peer, again.1.link_id, later);
        }
        assert!(!a.parts.get(&PART).unwrap().candidates.contains_key(&peer), "forgotten after repeated failures");
        a.add_candidates(&PART, (0..20).map(|_| PeerId::random()), now);
        assert_eq!(a.candidate_count(&PART), 16);
        assert!(a.candidates_dropped > 0);
        for part in 10..13u8 {
            a.join(StreamPartKey([part; 32])).unwrap();
        }
        assert_eq!(a.join(StreamPartKey([99; 32])), Err(OverlayError::TooManyParts { max: 4 }));
    }
}
