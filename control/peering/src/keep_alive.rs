//! Keeps connections to neighbors open, and only those: libp2p closes a connection once no
//! protocol needs it for `idle_connection_timeout`, and between handshakes nothing on a
//! neighbor's connection does (the dataplane traffic goes over UDP, not libp2p). Kademlia
//! and identify connections still close when idle, so connections stay bounded by the
//! neighbors plus what discovery uses at the moment.
//!
//! The driver calls [`Behaviour::set_neighbor`] when a peer becomes a neighbor of some part,
//! or stops being one of any; every connection to that peer is told, and a new connection
//! starts with the current answer.

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

#[derive(Default)]
pub struct Behaviour {
    neighbors: HashSet<PeerId>,
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    /// Notifications for handlers; at most one per connection per `set_neighbor` call.
    pending: VecDeque<ToSwarm<Infallible, bool>>,
}

impl Behaviour {
    /// Whether connections to `peer` are kept open.
    pub fn set_neighbor(&mut self, peer: PeerId, keep: bool) {
        let changed = if keep { self.neighbors.insert(peer) } else { self.neighbors.remove(&peer) };
        if !changed {
            return;
        }
        for connection in self.connections.get(&peer).into_iter().flatten() {
            self.pending.push_back(ToSwarm::NotifyHandler { peer_id: peer, handler: NotifyHandler::One(*connection), event: keep });
        }
    }

    fn handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().insert(connection);
        Handler { keep_alive: self.neighbors.contains(&peer) }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            if let Some(connections) = self.connections.get_mut(&closed.peer_id) {
                connections.remove(&closed.connection_id);
                if connections.is_empty() {
                    self.connections.remove(&closed.peer_id);
                }
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// A connection's handler: no protocol, only the keep-alive answer.
pub struct Handler {
    keep_alive: bool,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, keep_alive: bool) {
        self.keep_alive = keep_alive;
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>) {
        // DeniedUpgrade negotiates nothing: no stream ever reaches this handler.
        match event {
            ConnectionEvent::FullyNegotiatedInbound(negotiated) => match negotiated.protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(negotiated) => match negotiated.protocol {},
            _ => {}
        }
    }
}
