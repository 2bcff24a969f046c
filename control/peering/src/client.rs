//! The client's side of a client link (`runnel pub/sub --node <multiaddr>`): a publisher or
//! subscriber that is not a node asks a node's control process for a link instead of reading
//! a link file.
//!
//! [`ClientSession::open`] starts a thread with a small swarm (the node's transports; ping,
//! keep-alive and the neighbor protocol, no Kademlia, no listener), dials the node, sends
//! `ClientLink` with a fresh X25519 key, and derives the link key from the node's
//! `ClientGrant` (`handshake::derive_client_link_key`): the key never travels. The session
//! keeps the libp2p connection open, because the node removes the link when it closes; drop
//! the session to close it. [`ClientSession::connected`] says whether it is still up.

use crate::api::{Counters, PeeringError};
use crate::codec::{NeighborCodec, NEIGHBOR_PROTOCOL};
use crate::handshake::{derive_client_link_key, validate_endpoint, Ephemeral, Transcript};
use crate::wire::{ClientAccess, ClientLink, Endpoint, Request, Response};
use crate::{keep_alive, Identity};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{ping, Multiaddr, PeerId, Swarm};
use runnel_keystore::Secret;
use runnel_proto::stream::StreamPartKey;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a node granted: everything a client link config needs.
pub struct ClientGrant {
    /// The link's id, in datagrams both ways.
    pub link_id: u32,
    /// The node's dataplane: shard 0's address and the shard count.
    pub endpoint: Endpoint,
    /// `Debug` shows `<redacted>`.
    pub key: Secret,
    /// The node's PeerId (proved by the transport's handshake).
    pub node: PeerId,
}

impl fmt::Debug for ClientGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientGrant")
            .field("link_id", &self.link_id)
            .field("endpoint", &self.endpoint)
            .field("key", &self.key)
            .field("node", &self.node)
            .finish()
    }
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    keep_alive: keep_alive::Behaviour,
    ping: ping::Behaviour,
    neighbor: request_response::Behaviour<NeighborCodec>,
}

/// A granted client link and the connection that holds it.
pub struct ClientSession {
    grant: ClientGrant,
    connected: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ClientSession {
    /// Asks the node at `node` (a multiaddr ending in `/p2p/<PeerId>`) for a client link for
    /// `part`, to publish or to subscribe (`access`: a node that follows the chain checks the
    /// stream registry's permission of that kind for `identity`'s account), as `identity`;
    /// gives up after `timeout`. A refusal is [`PeeringError::Refused`].
    pub fn open(
        identity: Identity,
        node: &Multiaddr,
        part: StreamPartKey,
        access: ClientAccess,
        timeout: Duration,
    ) -> Result<Self, PeeringError> {
        let Some(Protocol::P2p(node_peer)) = node.iter().last() else {
            return Err(PeeringError::Config(format!("node address {node} does not end in /p2p/<PeerId>: add the node's id")));
        };
        let (ready, answer) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let connected = Arc::new(AtomicBool::new(false));
        let thread_connected = connected.clone();
        let node = node.clone();
        let thread = std::thread::Builder::new()
            .name("runnel-client-link".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(PeeringError::Start(format!("tokio runtime: {error}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut swarm = match build(&identity) {
                        Ok(swarm) => swarm,
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    let granted = tokio::time::timeout(timeout, negotiate(&mut swarm, &identity, node, node_peer, part, access)).await;
                    let granted =
                        granted.unwrap_or_else(|_| Err(PeeringError::Start(format!("no client link from the node within {timeout:?}"))));
                    let ok = granted.is_ok();
                    thread_connected.store(ok, Ordering::Release);
                    let _ = ready.send(granted);
                    if ok {
                        hold(&mut swarm, node_peer, stopped).await;
                    }
                    thread_connected.store(false, Ordering::Release);
                });
            })
            .map_err(|error| PeeringError::Start(format!("cannot start the client link thread: {error}")))?;
        match answer.recv() {
            Ok(Ok(grant)) => Ok(Self { grant, connected, stop: Some(stop), thread: Some(thread) }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(PeeringError::Stopped)
            }
        }
    }

    pub fn grant(&self) -> &ClientGrant {
        &self.grant
    }

    /// The granted link as the dataplane client takes it (`UdpClient::connect_with`).
    pub fn link_config(&self) -> runnel_client::ClientLinkConfig {
        runnel_client::ClientLinkConfig {
            node: self.grant.endpoint.address,
            node_shards: self.grant.endpoint.shards,
            link_id: self.grant.link_id,
            key: runnel_proto::linktag::LinkKey(*self.grant.key.expose()),
            datagram_length_max: runnel_proto::wire::DATAGRAM_LENGTH_DEFAULT,
        }
    }

    /// Whether the connection to the node (and so the link) is still up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn build(identity: &Identity) -> Result<Swarm<ClientBehaviour>, PeeringError> {
    let defaults = (Duration::from_secs(10), Duration::from_secs(10));
    crate::driver::build_swarm_with(identity, defaults, |_| ClientBehaviour {
        keep_alive: keep_alive::Behaviour::default(),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15))),
        neighbor: request_response::Behaviour::with_codec(
            NeighborCodec { counters: Arc::new(Counters::default()) },
            [(NEIGHBOR_PROTOCOL, ProtocolSupport::Outbound)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        ),
    })
}

/// Dials the node, asks for the link and derives its key.
async fn negotiate(
    swarm: &mut Swarm<ClientBehaviour>,
    identity: &Identity,
    node: Multiaddr,
    node_peer: PeerId,
    part: StreamPartKey,
    access: ClientAccess,
) -> Result<ClientGrant, PeeringError> {
    swarm.behaviour_mut().keep_alive.set_neighbor(node_peer, true);
    swarm.dial(node.clone()).map_err(|error| PeeringError::Start(format!("cannot dial {node}: {error}")))?;
    let ours = Ephemeral::generate();
    let ours_public = ours.public();
    let mut ours = Some(ours);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node_peer => {
                let request = Request::ClientLink(ClientLink { part: part.0, access, ephemeral_public: ours_public });
                swarm.behaviour_mut().neighbor.send_request(&node_peer, request);
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(PeeringError::Start(format!("cannot reach the node at {node}: {error}")));
            }
            SwarmEvent::Behaviour(ClientBehaviourEvent::Neighbor(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            })) if peer == node_peer => {
                let grant = match response {
                    Response::ClientGrant(grant) => grant,
                    Response::Refuse(reason) => return Err(PeeringError::Refused { reason, access }),
                    _ => return Err(PeeringError::Start("the node answered a client link request with something else".into())),
                };
                validate_endpoint(&grant.endpoint)
                    .map_err(|why| PeeringError::Start(format!("the node's dataplane endpoint {:?} is unusable: {why}", grant.endpoint)))?;
                let local = identity.peer_id();
                let transcript = Transcript {
                    initiator: &local,
                    responder: &node_peer,
                    part: &part.0,
                    initiator_link_id: 0,
                    responder_link_id: grant.link_id,
                    initiator_public: &ours_public,
                    responder_public: &grant.ephemeral_public,
                };
                let ours = ours.take().expect("one response per request");
                let key = derive_client_link_key(ours, &grant.ephemeral_public, &transcript)
                    .ok_or_else(|| PeeringError::Start("the node's key exchange was invalid (low-order key)".into()))?;
                return Ok(ClientGrant { link_id: grant.link_id, endpoint: grant.endpoint, key, node: node_peer });
            }
            SwarmEvent::Behaviour(ClientBehaviourEvent::Neighbor(request_response::Event::OutboundFailure { error, .. })) => {
                return Err(PeeringError::Start(format!("client link request failed: {error}")));
            }
            _ => {}
        }
    }
}

/// Keeps the connection until `stop` fires or the node's connection closes.
async fn hold(swarm: &mut Swarm<ClientBehaviour>, node_peer: PeerId, mut stop: tokio::sync::oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            event = swarm.select_next_some() => {
                if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } = event {
                    if peer_id == node_peer {
                        return;
                    }
                }
            }
        }
    }
}
