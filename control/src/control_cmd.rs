//! `runnel control --ipc PATH`: the control process beside a dataplane that runs as
//! `runnel node --ipc PATH`.
//!
//! What it does today:
//! - keeps a connection to the dataplane's command socket (reconnecting with backoff: the
//!   dataplane forwards on its own while control is away);
//! - applies the state it is asked for (`--join` stream parts), and replays it on every
//!   reconnect (replays that change nothing answer `Ok`);
//! - follows the dataplane's events and counters;
//! - serves the admin endpoint (`/status` JSON, `/metrics` Prometheus, [`crate::admin`]).
//!
//! With `--key-file` it also peers ([`runnel_peering`]): it joins each `--join` stream
//! part's libp2p overlay (bootstrap peers from `--bootstrap`), and each neighbor it agrees on
//! becomes an `AddLink` for a neighbor link — the key both sides derived, each side's own
//! link id — and each neighbor lost a `RemoveLink`. Links are part of the state replayed on
//! reconnect. No file names a node's neighbors.
//!
//! With `--chain-rpc` and `--registry` it follows the stream registry on the chain
//! ([`crate::chain_watch`]): the joined stream parts' publish permissions become policy
//! commands (diffed, and part of the replayed state), and client links are admitted only
//! with the registry's Publish or Subscribe permission.

use crate::admin::{self, Method, Refusal, Response};
use crate::chain_watch::{self, ChainArgs, ChainWatch};
use crate::traffic_reports::{Pusher, Reporter};
use runnel_chain::permissions::PartPolicy;
use runnel_core::counters::Counter;
use runnel_core::filter::FilterUpdate;
use runnel_core::link::{LinkConfig, LinkRole, LINK_BURST_DATAGRAMS_DEFAULT, LINK_RATE_DATAGRAMS_PER_S_DEFAULT};
use runnel_keystore::{load_secret, Limits, PasswordSource};
use runnel_node::command::Command;
use runnel_node::ipc::{IpcClient, IpcError, Reply, WireEvent, WireLinkTraffic};
use runnel_peering::wire::{ClientAccess, RefuseReason};
use runnel_peering::{ClientAdmission, Endpoint, Identity, Peering, PeeringConfig, PeeringCounter, PeeringEvent, PeeringHandle};
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The dataplane's command socket (`runnel node --ipc PATH`).
    #[arg(long, value_name = "PATH")]
    pub ipc: PathBuf,
    /// Admin HTTP address for /status and /metrics (port 0: any free port, printed at start).
    #[arg(long, env = "RUNNEL_ADMIN", default_value = "127.0.0.1:9464")]
    pub admin: String,
    /// Join this stream part (0x<owner>/<path>#<partition>); repeatable.
    #[arg(long, value_name = "STREAM_PART")]
    pub join: Vec<String>,
    /// The node's identity key (a 0600 key file or keystore, `runnel keygen --out`): enables
    /// peering. Its address is the node's Ethereum account, its libp2p PeerId the same key's.
    #[arg(long, env = "RUNNEL_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Keystore password file (or $RUNNEL_KEYSTORE_PASSWORD).
    #[arg(long, env = "RUNNEL_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// libp2p listen address; repeatable (env: comma-separated).
    #[arg(long, env = "RUNNEL_P2P_LISTEN", value_delimiter = ',', value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/7600")]
    pub p2p_listen: Vec<String>,
    /// A bootstrap peer (multiaddr ending in /p2p/<PeerId>); repeatable (env: comma-separated).
    #[arg(long, env = "RUNNEL_BOOTSTRAP", value_delimiter = ',', value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// The dataplane address neighbors send to (default: the dataplane's first listen address).
    #[arg(long, env = "RUNNEL_DATAPLANE_ADDRESS", value_name = "IP:PORT")]
    pub dataplane_address: Option<SocketAddr>,
    /// Use the dataplane endpoint a neighbor names even when its IP is not the one its
    /// libp2p connection comes from (hosts with a separate data network).
    #[arg(long, env = "RUNNEL_TRUST_PEER_ENDPOINTS")]
    pub trust_peer_endpoints: bool,
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Seconds per settlement epoch: at each end the node signs a report of what each
    /// neighbor link carried (`/settlement/reports`, docs/settlement.md).
    #[arg(long, env = "RUNNEL_SETTLEMENT_EPOCH_S", value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub settlement_epoch_s: u64,
    /// The settlement operator (`runnel operator`) each signed report is sent to:
    /// its base URL, `http://host:port`.
    #[arg(long, env = "RUNNEL_SETTLEMENT_OPERATOR", value_name = "URL")]
    pub settlement_operator: Option<String>,
}

/// How often the dataplane's counters are fetched.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Reads on the command socket wait at most this (the loop's tick).
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long links an earlier control process made keep forwarding after this one connects:
/// long enough for peering to find new neighbors (their peers keep their ends as long,
/// `PeeringConfig::disconnected_grace`).
const INHERITED_GRACE: Duration = Duration::from_secs(15);
/// How often the chain's permissions are re-derived even when the book did not change (a
/// public grant that expires makes a part restricted without any event).
const POLICY_REFRESH: Duration = Duration::from_secs(1);

/// What control counts (`runnel_control_…_total` in /metrics).
#[derive(Debug, Default)]
struct ControlCounters {
    ipc_connects: AtomicU64,
    ipc_disconnects: AtomicU64,
    events_received: AtomicU64,
    commands_failed: AtomicU64,
    admin_requests: AtomicU64,
    links_inherited: AtomicU64,
    policy_updates: AtomicU64,
    clients_revoked: AtomicU64,
}

impl ControlCounters {
    fn list(&self) -> [(&'static str, &'static str, u64); 8] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("control_ipc_connects", "Connections made to the dataplane's command socket.", get(&self.ipc_connects)),
            ("control_ipc_disconnects", "Connections to the dataplane's command socket lost.", get(&self.ipc_disconnects)),
            (
                "control_events_received",
                "Dataplane events received (signature failures, joins, slow consumers).",
                get(&self.events_received),
            ),
            ("control_commands_failed", "Commands the dataplane answered with an error.", get(&self.commands_failed)),
            ("control_admin_requests", "Requests served by the admin endpoint.", get(&self.admin_requests)),
            (
                "control_links_inherited",
                "Links found in the dataplane that an earlier control process made (kept for a grace period, then removed).",
                get(&self.links_inherited),
            ),
            (
                "control_policy_updates",
                "Permission updates (restrict, permit, revoke) sent to the dataplane from the stream registry.",
                get(&self.policy_updates),
            ),
            (
                "control_clients_revoked",
                "Subscriber client links removed because the stream registry no longer grants them Subscribe.",
                get(&self.clients_revoked),
            ),
        ]
    }
}

/// The dataplane as control last saw it.
#[derive(Debug, Default)]
struct DataplaneView {
    connected: bool,
    listen: Vec<String>,
    shards: u16,
    counters: Vec<(String, u64)>,
    /// Each link's traffic since it was added, by link id (from the last status reply).
    links: BTreeMap<u32, WireLinkTraffic>,
    /// Signs the per-epoch traffic reports (with a key file; none without).
    reporter: Option<Reporter>,
}

/// A link's traffic in `/status`.
fn traffic_json(view: &DataplaneView, link_id: u32) -> Value {
    match view.links.get(&link_id) {
        Some(t) => json!({
            "frames_sent": t.frames_sent,
            "bytes_sent": t.bytes_sent,
            "frames_received": t.frames_received,
            "bytes_received": t.bytes_received,
        }),
        None => Value::Null,
    }
}

/// A link peering agreed on (a neighbor or a client), as the dataplane got it.
#[derive(Debug, Clone)]
struct Agreed {
    part: StreamPartKey,
    peer: String,
    link: LinkConfig,
    /// A client link's account (from its PeerId) and what it was admitted to.
    client: Option<(Option<[u8; 20]>, ClientAccess)>,
    /// A neighbor's account (from its PeerId), whom traffic reports name.
    account: Option<[u8; 20]>,
}

impl Agreed {
    /// A client link's scope: its part, and only the access it was admitted to.
    fn scope(&self) -> Option<Command> {
        let (_, access) = self.client?;
        Some(Command::Policy(FilterUpdate::ScopeClient {
            link_id: self.link.id,
            part: self.part,
            publish: access == ClientAccess::Publish,
            subscribe: access == ClientAccess::Subscribe,
        }))
    }
}

/// What control wants the dataplane to hold: replayed on every (re)connect.
#[derive(Debug, Default)]
struct Desired {
    joins: Vec<Command>,
    /// Neighbor links by local link id.
    neighbors: BTreeMap<u32, Agreed>,
    /// Client links (`runnel pub/sub --node`) by link id.
    clients: BTreeMap<u32, Agreed>,
    /// Client links removed because the chain took their Subscribe permission; their
    /// ClientLinkDown needs no RemoveLink.
    revoked_clients: BTreeSet<u32>,
    /// Links the dataplane holds that an earlier control process made, and when to remove
    /// them: they forward until then, while peering makes this process's own.
    inherited: BTreeMap<u32, Instant>,
    /// The registry's publish policy for each joined part, as the dataplane holds it.
    policy: BTreeMap<StreamPartKey, PartPolicy>,
}

impl Desired {
    fn commands(&self) -> Vec<Command> {
        let mut commands = self.joins.clone();
        // Permissions before links: a publisher's first datagram meets its part's policy.
        let policy = chain_watch::policy_updates(&BTreeMap::new(), &self.policy, chain_watch::monotonic_deadline);
        commands.extend(policy.into_iter().map(Command::Policy));
        // A client link's scope before the link: it never exists unbound.
        commands.extend(self.clients.values().filter_map(Agreed::scope));
        commands.extend(self.neighbors.values().chain(self.clients.values()).map(|n| Command::AddLink(n.link.clone())));
        commands
    }

    /// RemoveLink for each subscriber the book no longer admits (revoked, expired, stream
    /// deleted); a publisher's frames are dropped by the filter's permissions instead.
    fn revoke_subscribers(&mut self, admission: &dyn ClientAdmission) -> Vec<Command> {
        let revoked: Vec<u32> = self
            .clients
            .values()
            .filter(|client| match client.client {
                Some((Some(account), ClientAccess::Subscribe)) => {
                    matches!(
                        admission.admit(account, client.part, ClientAccess::Subscribe),
                        Err(RefuseReason::NotPermitted | RefuseReason::UnknownStream)
                    )
                }
                _ => false,
            })
            .map(|client| client.link.id)
            .collect();
        revoked
            .into_iter()
            .map(|link_id| {
                if let Some(client) = self.clients.remove(&link_id) {
                    logln!("runnel control: client {} lost its Subscribe permission; removing link {link_id}", client.peer);
                }
                self.revoked_clients.insert(link_id);
                Command::RemoveLink { link_id }
            })
            .collect()
    }

    fn joined_parts(&self) -> Vec<StreamPartKey> {
        self.joins.iter().filter_map(|command| if let Command::Join { part } = command { Some(*part) } else { None }).collect()
    }

    /// Takes the dataplane's commanded links (its Hello): those this process did not make
    /// are inherited; returns how many are new.
    fn inherit(&mut self, links: &[u32], now: Instant) -> usize {
        let mut new = 0;
        for id in links {
            if !self.neighbors.contains_key(id) && !self.clients.contains_key(id) && !self.inherited.contains_key(id) {
                self.inherited.insert(*id, now + INHERITED_GRACE);
                new += 1;
            }
        }
        new
    }

    /// RemoveLink for each inherited link whose grace period is over.
    fn expire_inherited(&mut self, now: Instant) -> Vec<Command> {
        let expired: Vec<u32> = self.inherited.iter().filter(|(_, until)| **until <= now).map(|(id, _)| *id).collect();
        if !expired.is_empty() {
            logln!("runnel control: removing {} links an earlier control process made", expired.len());
        }
        expired
            .into_iter()
            .map(|id| {
                self.inherited.remove(&id);
                Command::RemoveLink { link_id: id }
            })
            .collect()
    }

    fn joined(&self, part: &StreamPartKey) -> bool {
        self.joins.iter().any(|command| matches!(command, Command::Join { part: joined } if joined == part))
    }

    /// Takes in a peering event; returns the commands it needs. A client link for a part
    /// this node has not joined joins it (dataplane and overlay: the node now serves it).
    fn absorb(&mut self, event: PeeringEvent, peering: &PeeringHandle) -> Vec<Command> {
        let mut commands = Vec::new();
        if let PeeringEvent::ClientLinkUp(up) = &event {
            if !self.joined(&up.part) {
                logln!("runnel control: joining {} for a client", hex::encode(&up.part.0[..8]));
                if let Err(error) = peering.join(up.part) {
                    logln!("runnel control: peering join for a client: {error}");
                }
                self.joins.push(Command::Join { part: up.part });
                commands.push(Command::Join { part: up.part });
            }
        }
        // A new link that reuses an inherited link's id replaces it.
        let new_id = match &event {
            PeeringEvent::NeighborUp(up) => Some(up.local_link_id),
            PeeringEvent::ClientLinkUp(up) => Some(up.link_id),
            PeeringEvent::NeighborDown(_) | PeeringEvent::ClientLinkDown(_) => None,
        };
        if let Some(id) = new_id.filter(|id| self.inherited.remove(id).is_some()) {
            commands.push(Command::RemoveLink { link_id: id });
        }
        commands.extend(self.absorb_link(event));
        commands
    }

    fn absorb_link(&mut self, event: PeeringEvent) -> Vec<Command> {
        match event {
            PeeringEvent::NeighborUp(up) => {
                let link = LinkConfig {
                    id: up.local_link_id,
                    peer_link_id: Some(up.remote_link_id),
                    key: LinkKey(*up.key.expose()),
                    role: LinkRole::Neighbor,
                    peer: Some(up.remote_endpoint),
                    peer_shards: up.remote_shards,
                    rate_datagrams_per_s: LINK_RATE_DATAGRAMS_PER_S_DEFAULT,
                    burst_datagrams: LINK_BURST_DATAGRAMS_DEFAULT,
                };
                logln!(
                    "runnel control: neighbor {} for {} (link {} ↔ {}, dataplane {})",
                    up.peer,
                    hex::encode(&up.part.0[..8]),
                    up.local_link_id,
                    up.remote_link_id,
                    up.remote_endpoint
                );
                let agreed = Agreed {
                    part: up.part,
                    peer: up.peer.to_string(),
                    link: link.clone(),
                    client: None,
                    account: runnel_peering::address_of_peer(&up.peer),
                };
                self.neighbors.insert(up.local_link_id, agreed);
                vec![Command::AddLink(link)]
            }
            PeeringEvent::NeighborDown(down) => {
                logln!("runnel control: neighbor {} gone (link {})", down.peer, down.local_link_id);
                self.neighbors.remove(&down.local_link_id);
                vec![Command::RemoveLink { link_id: down.local_link_id }]
            }
            PeeringEvent::ClientLinkUp(up) => {
                let link = LinkConfig {
                    id: up.link_id,
                    peer_link_id: None,
                    key: LinkKey(*up.key.expose()),
                    role: LinkRole::Client,
                    peer: None,
                    peer_shards: 1,
                    rate_datagrams_per_s: LINK_RATE_DATAGRAMS_PER_S_DEFAULT,
                    burst_datagrams: LINK_BURST_DATAGRAMS_DEFAULT,
                };
                logln!("runnel control: client {} for {} (link {})", up.peer, hex::encode(&up.part.0[..8]), up.link_id);
                let agreed = Agreed {
                    part: up.part,
                    peer: up.peer.to_string(),
                    link: link.clone(),
                    client: Some((runnel_peering::address_of_peer(&up.peer), up.access)),
                    account: None,
                };
                // A reused id is a new client: the old one's revocation is over.
                self.revoked_clients.remove(&up.link_id);
                let scope = agreed.scope().expect("a client link has a scope");
                self.clients.insert(up.link_id, agreed);
                vec![scope, Command::AddLink(link)]
            }
            PeeringEvent::ClientLinkDown(down) => {
                logln!("runnel control: client {} gone (link {})", down.peer, down.link_id);
                self.clients.remove(&down.link_id);
                if self.revoked_clients.remove(&down.link_id) {
                    return Vec::new();
                }
                vec![Command::RemoveLink { link_id: down.link_id }]
            }
        }
    }
}

/// Peering, once the dataplane's endpoint is known.
struct PeeringState {
    handle: PeeringHandle,
    events: crossbeam_channel::Receiver<PeeringEvent>,
}

pub fn run(args: ControlArgs) -> Result<(), String> {
    let parts: Vec<StreamPart> =
        args.join.iter().map(|text| StreamPart::parse(text).map_err(|e| format!("--join {text:?}: {}", e.0))).collect::<Result<_, _>>()?;
    let identity = match &args.key_file {
        Some(path) => {
            let loaded = load_secret(path, PasswordSource::file_or_env(args.password_file.as_deref()), &Limits::DEFAULT)
                .map_err(|e| e.to_string())?;
            Some(Identity::from_secret(&loaded.secret).map_err(|e| format!("--key-file {}: {}", path.display(), e.0))?)
        }
        None => None,
    };
    let chain = ChainWatch::start(&args.chain)?;
    let mut initial = Desired { joins: parts.iter().map(|part| Command::Join { part: part.key() }).collect(), ..Desired::default() };
    if let Some(chain) = &chain {
        // Closed until the first sync: the joined parts start restricted with no publisher.
        initial.policy = chain_watch::policies_for(&initial.joined_parts(), &chain.view(), chain_watch::unix_now_s());
    }
    let desired = Mutex::new(initial);
    let listener = TcpListener::bind(&args.admin).map_err(|e| format!("--admin {}: {e}", args.admin))?;
    let admin_address = listener.local_addr().map_err(|e| e.to_string())?;
    logln!("runnel control: admin on http://{admin_address} (/status, /metrics)");
    let pusher = args.settlement_operator.as_deref().map(Pusher::start).transpose()?;
    if pusher.is_some() && identity.is_none() {
        return Err("--settlement-operator needs --key-file: reports are signed with the node's key".into());
    }
    let reporter = identity.as_ref().map(|identity| Reporter::new(args.settlement_epoch_s, identity.publisher_key().clone(), pusher));
    let view = Mutex::new(DataplaneView { reporter, ..DataplaneView::default() });
    let peering: Mutex<Option<PeeringState>> = Mutex::new(None);
    let counters = ControlCounters::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            admin::serve(&listener, &stop, |request| {
                counters.admin_requests.fetch_add(1, Ordering::Relaxed);
                if request.method != Method::Get {
                    return Response::refused(Refusal::MethodNotAllowed);
                }
                let view = view.lock().expect("no panics while holding it");
                let desired = desired.lock().expect("no panics while holding it");
                let peering = peering.lock().expect("no panics while holding it");
                let handle = peering.as_ref().map(|p| &p.handle);
                match request.path.as_str() {
                    "/status" => {
                        let mut status = status_json(&args, &parts, &view, &desired, handle, &counters, started);
                        status["chain"] = chain.as_ref().map_or(Value::Null, |chain| chain_json(chain, &desired));
                        Response::json(&status)
                    }
                    "/metrics" => Response::metrics(metrics(&view, handle, &counters)),
                    "/settlement/reports" => Response::json(&view.reporter.as_ref().map_or(Value::Null, Reporter::json)),
                    _ => Response::refused(Refusal::NotFound),
                }
            })
        });
        let followed = follow_dataplane(&args, identity, chain.as_ref(), &desired, &peering, &view, &counters);
        stop.store(true, Ordering::Release);
        let served = server.join().unwrap_or_else(|_| Err(std::io::Error::other("the admin server panicked")));
        followed.and(served.map_err(|e| format!("admin endpoint: {e}")))
    });
    if let Some(state) = peering.into_inner().expect("no panics while holding it") {
        state.handle.shutdown();
    }
    logln!("runnel control: stopped");
    result
}

/// Starts peering for the dataplane `client` is connected to, and joins every part.
fn start_peering(
    args: &ControlArgs,
    identity: Identity,
    client: &IpcClient,
    desired: &Desired,
    chain: Option<&ChainWatch>,
) -> Result<PeeringState, String> {
    let address = match args.dataplane_address {
        Some(address) => address,
        None => client
            .listen
            .first()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| "the dataplane reported no listen address: pass --dataplane-address".to_string())?,
    };
    let mut config = PeeringConfig::new(identity, Endpoint { address, shards: client.shards });
    config.trust_peer_endpoints = args.trust_peer_endpoints;
    config.admission = chain.map(ChainWatch::admission);
    config.listen =
        args.p2p_listen.iter().map(|text| text.parse().map_err(|e| format!("--p2p-listen {text:?}: {e}"))).collect::<Result<_, _>>()?;
    config.bootstrap =
        args.bootstrap.iter().map(|text| text.parse().map_err(|e| format!("--bootstrap {text:?}: {e}"))).collect::<Result<_, _>>()?;
    let (handle, events) = Peering::spawn(config).map_err(|e| format!("peering: {e:?}"))?;
    let peer_id = handle.local_peer_id();
    // Listen addresses appear once the listeners are up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut listening = Vec::new();
    while listening.is_empty() && Instant::now() < deadline {
        listening = handle.listen_addrs().map_err(|e| format!("peering: {e:?}"))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    for address in &listening {
        logln!("runnel control: peer listening on {address}/p2p/{peer_id}");
    }
    for command in &desired.joins {
        if let Command::Join { part } = command {
            handle.join(*part).map_err(|e| format!("peering join: {e:?}"))?;
        }
    }
    Ok(PeeringState { handle, events })
}

/// Takes in waiting peering events; returns the commands they need.
fn absorb_peering(peering: &Mutex<Option<PeeringState>>, desired: &Mutex<Desired>) -> Vec<Command> {
    let peering = peering.lock().expect("no panics while holding it");
    let Some(state) = peering.as_ref() else { return Vec::new() };
    let mut desired = desired.lock().expect("no panics while holding it");
    state.events.try_iter().flat_map(|event| desired.absorb(event, &state.handle)).collect()
}

/// Connects, applies the desired state, follows replies and peering; reconnects until a
/// stop is requested.
fn follow_dataplane(
    args: &ControlArgs,
    mut identity: Option<Identity>,
    chain: Option<&ChainWatch>,
    desired: &Mutex<Desired>,
    peering: &Mutex<Option<PeeringState>>,
    view: &Mutex<DataplaneView>,
    counters: &ControlCounters,
) -> Result<(), String> {
    let mut backoff = BACKOFF_MIN;
    let mut said_waiting = false;
    while !crate::signals::stop_requested() {
        let mut client = match IpcClient::connect(&args.ipc, READ_TIMEOUT * 20) {
            Ok(client) => client,
            Err(error) => {
                if !said_waiting {
                    logln!("runnel control: waiting for the dataplane at {}: {error}", args.ipc.display());
                    said_waiting = true;
                }
                // Neighbors found meanwhile are kept for the next connection.
                absorb_peering(peering, desired);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        said_waiting = false;
        backoff = BACKOFF_MIN;
        counters.ipc_connects.fetch_add(1, Ordering::Relaxed);
        logln!("runnel control: connected to the dataplane at {} (listening on {})", args.ipc.display(), client.listen.join(", "));
        {
            let mut view = view.lock().expect("no panics while holding it");
            view.connected = true;
            view.listen = client.listen.clone();
            view.shards = client.shards;
        }
        if let Some(identity) = identity.take() {
            let state = start_peering(args, identity, &client, &desired.lock().expect("no panics while holding it"), chain)?;
            *peering.lock().expect("no panics while holding it") = Some(state);
        }
        let result = session(&mut client, chain, desired, peering, view, counters);
        view.lock().expect("no panics while holding it").connected = false;
        if let Err(error) = result {
            counters.ipc_disconnects.fetch_add(1, Ordering::Relaxed);
            logln!("runnel control: lost the dataplane ({error}); reconnecting");
        }
    }
    Ok(())
}

/// One connection: replay the desired state, then poll status, read replies and turn
/// peering events into commands.
fn session(
    client: &mut IpcClient,
    chain: Option<&ChainWatch>,
    desired: &Mutex<Desired>,
    peering: &Mutex<Option<PeeringState>>,
    view: &Mutex<DataplaneView>,
    counters: &ControlCounters,
) -> Result<(), IpcError> {
    client.set_read_timeout(READ_TIMEOUT * 20)?;
    absorb_peering(peering, desired);
    let inherited = desired.lock().expect("no panics while holding it").inherit(&client.links, Instant::now());
    if inherited > 0 {
        counters.links_inherited.fetch_add(inherited as u64, Ordering::Relaxed);
        logln!(
            "runnel control: the dataplane holds {inherited} links an earlier control process made; they forward for {}s more",
            INHERITED_GRACE.as_secs()
        );
    }
    let replay = desired.lock().expect("no panics while holding it").commands();
    for command in &replay {
        let result = client.execute(command, |event| on_event(&event, counters, peering))?;
        if let Err(error) = result {
            counters.commands_failed.fetch_add(1, Ordering::Relaxed);
            logln!("runnel control: {} refused: {}", command.name(), error.message);
        }
    }
    client.set_read_timeout(READ_TIMEOUT)?;
    let mut next_status = Instant::now();
    let mut policy_seen = (u64::MAX, Vec::new(), Instant::now());
    let mut boundary_requested = None;
    while !crate::signals::stop_requested() {
        for command in absorb_peering(peering, desired) {
            client.send(&command)?;
        }
        if let Some(chain) = chain {
            apply_chain_policy(client, chain, desired, &mut policy_seen, counters, peering)?;
        }
        for command in desired.lock().expect("no panics while holding it").expire_inherited(Instant::now()) {
            client.send(&command)?;
        }
        // At an epoch's end the traffic report wants fresh counts, not up to a second old.
        let boundary =
            view.lock().expect("no panics while holding it").reporter.as_ref().and_then(|r| r.boundary_due(chain_watch::unix_now_s()));
        if boundary.is_some() && boundary != boundary_requested {
            boundary_requested = boundary;
            client.request_status()?;
        }
        if Instant::now() >= next_status {
            client.request_status()?;
            next_status += STATUS_INTERVAL;
        }
        match client.poll()? {
            Some(Reply::Status { counters: totals, links, .. }) => {
                let mut view = view.lock().expect("no panics while holding it");
                view.counters = totals;
                view.links = links.into_iter().map(|link| (link.link_id, link)).collect();
                let DataplaneView { links, reporter, .. } = &mut *view;
                if let Some(reporter) = reporter {
                    let neighbors: BTreeMap<u32, [u8; 20]> = desired
                        .lock()
                        .expect("no panics while holding it")
                        .neighbors
                        .iter()
                        .filter_map(|(id, n)| Some((*id, n.account?)))
                        .collect();
                    reporter.observe(chain_watch::unix_now_s(), links, &neighbors);
                }
            }
            Some(Reply::Event(event)) => on_event(&event, counters, peering),
            Some(Reply::Response { error: Some(error), .. }) => {
                counters.commands_failed.fetch_add(1, Ordering::Relaxed);
                logln!("runnel control: a command was refused: {}", error.message);
            }
            Some(Reply::ProtocolError { message }) => return Err(IpcError::Handshake(message)),
            Some(_) | None => {}
        }
    }
    Ok(())
}

/// Re-derives the joined parts' permissions when the book, the joins or a second changed,
/// and sends the dataplane what differs. `seen` is (book generation, joined parts, when).
fn apply_chain_policy(
    client: &mut IpcClient,
    chain: &ChainWatch,
    desired: &Mutex<Desired>,
    seen: &mut (u64, Vec<StreamPartKey>, Instant),
    counters: &ControlCounters,
    peering: &Mutex<Option<PeeringState>>,
) -> Result<(), IpcError> {
    let joined = desired.lock().expect("no panics while holding it").joined_parts();
    let generation = chain.view().generation;
    if generation == seen.0 && joined == seen.1 && seen.2.elapsed() < POLICY_REFRESH {
        return Ok(());
    }
    let policy = chain_watch::policies_for(&joined, &chain.view(), chain_watch::unix_now_s());
    *seen = (generation, joined, Instant::now());
    let (updates, removals) = {
        let mut desired = desired.lock().expect("no panics while holding it");
        let updates = chain_watch::policy_updates(&desired.policy, &policy, chain_watch::monotonic_deadline);
        desired.policy = policy;
        (updates, desired.revoke_subscribers(chain.admission().as_ref()))
    };
    for update in updates {
        counters.policy_updates.fetch_add(1, Ordering::Relaxed);
        let command = Command::Policy(update);
        if let Err(error) = client.execute(&command, |event| on_event(&event, counters, peering))? {
            counters.commands_failed.fetch_add(1, Ordering::Relaxed);
            logln!("runnel control: permission update refused: {}", error.message);
        }
    }
    for command in removals {
        counters.clients_revoked.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = client.execute(&command, |event| on_event(&event, counters, peering))? {
            counters.commands_failed.fetch_add(1, Ordering::Relaxed);
            logln!("runnel control: removing a revoked subscriber's link refused: {}", error.message);
        }
    }
    Ok(())
}

fn on_event(event: &WireEvent, counters: &ControlCounters, peering: &Mutex<Option<PeeringState>>) {
    counters.events_received.fetch_add(1, Ordering::Relaxed);
    match event {
        WireEvent::SignatureFailure { shard, link_id, publisher, publisher_proven } => logln!(
            "runnel control: shard {shard}: bad signature on link {link_id} from 0x{} (publisher proven on that link: {publisher_proven})",
            hex::encode(publisher)
        ),
        WireEvent::SlowConsumer { shard, link_id } => logln!("runnel control: shard {shard}: link {link_id} is a slow consumer"),
        WireEvent::NeighborSilent { shard, link_id, part } => {
            logln!(
                "runnel control: shard {shard}: neighbor link {link_id} went silent in stream part {}; replacing it",
                hex::encode(&part[..8])
            );
            // Its NeighborDown comes back as a peering event and becomes the RemoveLink.
            if let Some(state) = peering.lock().expect("no panics while holding it").as_ref() {
                if let Err(error) = state.handle.drop_neighbor(StreamPartKey(*part), *link_id) {
                    logln!("runnel control: cannot drop the silent neighbor: {error}");
                }
            }
        }
        WireEvent::Joined { .. } => {}
    }
}

fn status_json(
    args: &ControlArgs,
    parts: &[StreamPart],
    view: &DataplaneView,
    desired: &Desired,
    peering: Option<&PeeringHandle>,
    counters: &ControlCounters,
    started: Instant,
) -> Value {
    let dataplane_counters: Map<String, Value> = view.counters.iter().map(|(name, value)| (name.clone(), json!(value))).collect();
    let control: Map<String, Value> =
        counters.list().iter().map(|(name, _, value)| (name.trim_start_matches("control_").to_string(), json!(value))).collect();
    // Neighbors whose connection closed keep their link for a grace period.
    let mut disconnected = std::collections::BTreeSet::new();
    if let Some(handle) = peering {
        let mut neighbor_parts: Vec<StreamPartKey> = desired.neighbors.values().map(|n| n.part).collect();
        neighbor_parts.sort_unstable_by_key(|part| part.0);
        neighbor_parts.dedup();
        for part in neighbor_parts {
            let infos = handle.neighbors(part).unwrap_or_default();
            disconnected.extend(infos.iter().filter(|info| !info.is_connected()).map(|info| info.local_link_id));
        }
    }
    let neighbors: Vec<Value> = desired
        .neighbors
        .values()
        .map(|n| {
            json!({
                "stream_part_key": hex::encode(n.part.0),
                "peer": n.peer,
                "connected": !disconnected.contains(&n.link.id),
                "link_id": n.link.id,
                "peer_link_id": n.link.peer_link_id,
                "dataplane": n.link.peer.map(|a| a.to_string()),
                "traffic": traffic_json(view, n.link.id),
            })
        })
        .collect();
    let mut peers: Vec<&str> = desired.neighbors.values().map(|n| n.peer.as_str()).collect();
    peers.sort_unstable();
    peers.dedup();
    json!({
        "uptime_s": started.elapsed().as_secs_f64(),
        "dataplane": {
            "ipc": args.ipc.display().to_string(),
            "connected": view.connected,
            "listen": view.listen,
            "shards": view.shards,
        },
        "peer_id": peering.map(|p| p.local_peer_id().to_string()),
        "stream_parts": parts.iter().map(|part| json!({ "stream_part": part.to_string(), "key": hex::encode(part.key().0) })).collect::<Vec<_>>(),
        "peers": peers,
        "neighbors": neighbors,
        "clients": desired.clients.values().map(|c| json!({
            "stream_part_key": hex::encode(c.part.0),
            "peer": c.peer,
            "link_id": c.link.id,
            "traffic": traffic_json(view, c.link.id),
        })).collect::<Vec<_>>(),
        "inherited_links": desired.inherited.keys().collect::<Vec<_>>(),
        "counters": dataplane_counters,
        "control": control,
    })
}

/// `/status`'s `chain` object: how far the registry has been read and what it gave.
fn chain_json(chain: &ChainWatch, desired: &Desired) -> Value {
    let view = chain.view();
    json!({
        "rpc": chain.endpoint,
        "registry": format!("{:#x}", chain.registry),
        "synced_block": view.synced_to,
        "polls": view.polls,
        "poll_errors": view.poll_errors,
        "last_error": view.last_error,
        "reorgs": view.reorgs,
        "events": view.events,
        "streams": view.book.streams().count(),
        "restricted_parts": desired.policy.values().filter(|policy| policy.is_some()).count(),
    })
}

fn metrics(view: &DataplaneView, peering: Option<&PeeringHandle>, counters: &ControlCounters) -> String {
    let mut all: Vec<(String, u64)> = view.counters.clone();
    all.extend(counters.list().iter().map(|(name, _, value)| (name.to_string(), *value)));
    if let Some(handle) = peering {
        for counter in PeeringCounter::ALL {
            let name = counter.name().trim_start_matches("runnel_").trim_end_matches("_total").to_string();
            all.push((name, handle.counter(*counter)));
        }
    }
    admin::prometheus(&all, |name| {
        if let Some(counter) = Counter::ALL.iter().find(|c| c.name() == name) {
            return counter.help().to_string();
        }
        if let Some((_, help, _)) = counters.list().iter().find(|(n, _, _)| *n == name) {
            return help.to_string();
        }
        match name.split_once('_') {
            Some(("runtime", rest)) => format!("Shard runtime counter {rest} (node-wide total)."),
            Some(("commands", rest)) => format!("Command interface counter {rest}."),
            Some(("policy", rest)) => format!("Dataplane policy thread counter {rest} (quarantines, XDP map writes)."),
            Some(("ipc", rest)) => format!("Dataplane command socket counter {rest}."),
            Some(("xdp", rest)) => format!("XDP filter verdict {rest}, summed over CPUs."),
            Some(("peering", rest)) => format!("Peering counter {rest}."),
            _ => format!("Counter {name}."),
        }
    })
}
