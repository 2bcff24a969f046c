//! The node runner: starts one shard per configured core and hands back a handle to watch and
//! stop them.
//!
//! ```no_run
//! use runnel_node::{config::NodeConfig, node::Node};
//! let config = NodeConfig::parse("[node]\nlisten = \"127.0.0.1:7000\"\nshards = 2\n").unwrap();
//! let node = Node::start(config).unwrap();   // shards on 127.0.0.1:7000 and :7001
//! println!("{:?}", node.counters());           // one snapshot per shard
//! node.stop().unwrap();                        // or drop it
//! ```
//!
//! # How it works
//! [`Node::start`] checks the kernel, binds shard i's UDP socket on `listen` port + i (with
//! `UDP_GRO`), then starts each shard as a glommio `LocalExecutor` on its own thread, pinned to
//! the i-th allowed core (modulo their count), and waits until every shard has its io_uring
//! and buffer ring set up. Any failure stops the shards already started and returns a
//! [`NodeError`] that says what to change.
//!
//! The handle talks to shards without ever blocking them:
//! - counters: each shard publishes its counters into per-shard atomics after every loop turn;
//!   [`NodeHandle::counters`] reads them at any time, even from a stuck shard (chosen over a
//!   request/reply channel so that reading metrics never waits up to a shard's wait timeout,
//!   and so a scraper cannot slow the data path);
//! - commands ([`NodeHandle::submit`]: add/remove a link, join/leave a stream part, set a
//!   permission; [`crate::command`]) go, each with an id, to the policy thread, which routes
//!   them to the shards and the XDP maps and answers each exactly once
//!   ([`NodeHandle::responses`], [`NodeHandle::wait_response`]);
//! - relay events arrive on one bounded channel ([`NodeHandle::events`]); when it is full the
//!   shard drops the event and counts it ([`crate::shard::RuntimeCounter::EventsDropped`]);
//! - the early-rejection filter: [`Node::start`] loads the XDP program and attaches it to the
//!   interface holding `node.listen` (native, else generic; `[xdp]` in the config), or runs
//!   the same checks in userspace and says why ([`NodeHandle::filter_mode`]). A policy thread
//!   ([`crate::policy`]) owns the XDP maps, quarantines links and publishers whose signatures
//!   fail, and broadcasts policy updates (`Command::Policy`) to the shards;
//! - stop sets a flag every shard checks at least every
//!   [`WAIT_TIMEOUT_US_MAX`](crate::shard::WAIT_TIMEOUT_US_MAX) µs, then joins the threads.
//!
//! # Limits
//! Linux ≥ 6.0; locked-memory limit ≥ 512 KiB (glommio's check); one UDP socket per shard,
//! so the node uses `shards` consecutive ports.

use crate::command::{
    Command, CommandCounter, CommandCounters, CommandError, CommandId, Response, COMMANDS_IN_FLIGHT_MAX, RESPONSE_QUEUE_LENGTH_MAX,
    SUBMITTED_COMMANDS_MAX,
};
use crate::conductor::Conductor;
use crate::config::{permission_updates, NodeConfig, XdpMode};
use crate::policy::{apply_to_xdp, set_xdp_link, Policy, PolicyCounters};
use crate::shard::runtime::{run_shard, ShardContext};
use crate::shard::{
    RuntimeCounters, ShardAck, ShardCommand, ShardEvent, SharedCounters, COMMAND_QUEUE_LENGTH_MAX, EVENT_QUEUE_LENGTH_MAX,
    SOCKET_RECEIVE_BUFFER_LENGTH,
};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use glommio::{ExecutorJoinHandle, GlommioError, LocalExecutorBuilder, Placement, ReactorErrorKind};
use runnel_core::counters::Counters;
use runnel_core::filter::FilterUpdate;
use runnel_core::relay::LinkTraffic;
use runnel_ebpf::{AttachMode, XdpFilter, VERDICT_COUNT};
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes glommio preallocates per executor for its own (storage) I/O; shards do their network
/// I/O on their own ring, so glommio's 10 MiB default would only cost locked memory.
const GLOMMIO_IO_MEMORY: usize = 256 << 10;
/// How long the blocking wrappers ([`NodeHandle::execute`] and those built on it) wait for a
/// response: far above a shard's loop turn (at most 5 ms), so only a stuck shard hits it.
pub const COMMAND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How often [`NodeHandle::wait_response`] looks at responses other callers set aside.
const RESPONSE_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Oldest kernel with everything the shard uses (multishot recvmsg arrived in 6.0).
const KERNEL_VERSION_MIN: (u32, u32) = (6, 0);

/// Why the node could not start or stopped with an error; each says what to change.
#[derive(Debug)]
pub enum NodeError {
    /// Another socket holds the port.
    AddressInUse { address: SocketAddr },
    /// Binding failed for another reason (address not on this host, privileged port...).
    Bind { address: SocketAddr, source: io::Error },
    /// A socket option the shard needs was refused.
    SocketOption { address: SocketAddr, option: &'static str, source: io::Error },
    /// The locked-memory limit is too low for io_uring.
    MemlockTooLow { limit_bytes: u64, what: &'static str },
    /// The kernel or the sandbox does not offer what the shards need.
    IoUringUnsupported { reason: String },
    /// A shard's executor could not start.
    Executor { shard: u16, reason: String },
    /// A shard stopped on an unexpected I/O error.
    ShardFailed { shard: u16, reason: String },
    /// The node's command queue is full: the conductor is behind, or nobody reads responses.
    CommandQueueFull,
    /// `[xdp] mode` asked for native or generic XDP and it could not be set up.
    Xdp { reason: String },
    /// A command was refused or failed ([`NodeHandle::execute`]).
    Command { id: CommandId, command: &'static str, error: CommandError },
    /// No response to the command within the timeout.
    ResponseTimeout { id: CommandId, timeout: Duration },
    /// The node has stopped: its conductor takes no more commands.
    Stopped,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::AddressInUse { address } => write!(
                f,
                "UDP port {} on {} is already in use (shard i listens on node.listen port + i): stop the other process or pick another node.listen port",
                address.port(),
                address.ip()
            ),
            NodeError::Bind { address, source } => write!(
                f,
                "cannot bind UDP {address}: {source} (is node.listen an address of this host? ports below 1024 need CAP_NET_BIND_SERVICE)"
            ),
            NodeError::SocketOption { address, option, source } => {
                write!(f, "cannot set {option} on UDP {address}: {source} (needs Linux ≥ 5.0)")
            }
            NodeError::MemlockTooLow { limit_bytes, what } => write!(
                f,
                "locked-memory limit too low while {what}: it is {} KiB. Raise it: `ulimit -l unlimited` in the shell, \
                 LimitMEMLOCK=infinity in the systemd unit, a `memlock` line in /etc/security/limits.conf, \
                 or `--ulimit memlock=-1` for docker",
                limit_bytes / 1024
            ),
            NodeError::IoUringUnsupported { reason } => write!(f, "io_uring unavailable: {reason}"),
            NodeError::Executor { shard, reason } => write!(f, "shard {shard}: cannot start its executor: {reason}"),
            NodeError::ShardFailed { shard, reason } => write!(f, "shard {shard} failed: {reason}"),
            NodeError::CommandQueueFull => write!(
                f,
                "the node's command queue is full ({SUBMITTED_COMMANDS_MAX} commands): read the responses (the node takes no \
                 command while {RESPONSE_QUEUE_LENGTH_MAX} answers are unread) and retry"
            ),
            NodeError::Xdp { reason } => write!(f, "XDP filter: {reason} (or set [xdp] mode = \"auto\" to fall back, \"off\" for userspace checks)"),
            NodeError::Command { id, command, error } => write!(f, "{command} command {id} failed: {error}"),
            NodeError::ResponseTimeout { id, timeout } => write!(
                f,
                "no response to command {id} within {timeout:?}: a shard is stuck or stopped; the command may still take effect, \
                 and its response still arrives on NodeHandle::responses"
            ),
            NodeError::Stopped => write!(f, "the node has stopped and takes no more commands"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Starts nodes; see the module doc.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Binds every shard's socket, starts every shard, and returns once all are receiving.
    pub fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        check_kernel()?;
        let sockets = bind_sockets(&config)?;
        let initial_updates = permission_updates(&config);
        let (xdp, filter_mode) = set_up_xdp(&config, &initial_updates)?;
        let (shard_events_sender, shard_events) = bounded(EVENT_QUEUE_LENGTH_MAX);
        let (events_sender, events) = bounded(EVENT_QUEUE_LENGTH_MAX);
        let (commands_sender, commands) = bounded(SUBMITTED_COMMANDS_MAX);
        let (responses_sender, responses) = bounded(RESPONSE_QUEUE_LENGTH_MAX);
        // Room for one ack per command in flight per shard: a shard never finds it full.
        let (acks_sender, acks) = bounded(COMMANDS_IN_FLIGHT_MAX * config.shards as usize);
        let config = Arc::new(config);
        // Dropping `node` on any error below stops and joins the shards started so far.
        let mut node = NodeHandle {
            shards: Vec::with_capacity(sockets.len()),
            stop: Arc::new(AtomicBool::new(false)),
            events,
            filter_mode,
            policy: None,
            policy_counters: Arc::new(PolicyCounters::default()),
            commands: commands_sender,
            responses,
            responses_set_aside: Mutex::new(VecDeque::new()),
            next_command_id: AtomicU64::new(1),
            command_counters: Arc::new(CommandCounters::default()),
            commanded_links: Arc::new(Mutex::new(BTreeSet::new())),
        };
        let shared = ShardShared {
            config: config.clone(),
            initial_updates,
            rate_limit_in_userspace: xdp.is_none(),
            events: shard_events_sender,
            acks: acks_sender,
            cpus: allowed_cpus(),
        };
        let mut shard_commands = Vec::with_capacity(config.shards as usize);
        for (index, socket) in sockets.into_iter().enumerate() {
            shard_commands.push(node.start_shard(index as u16, socket, &shared)?);
        }
        let conductor =
            Conductor::new(commands, acks, responses_sender, node.command_counters.clone(), &config.links, node.commanded_links.clone());
        let policy = Policy {
            xdp,
            shards: shard_commands,
            events_in: shard_events,
            events_out: events_sender,
            conductor,
            counters: node.policy_counters.clone(),
            stop: node.stop.clone(),
        };
        let join = std::thread::Builder::new()
            .name("runnel-policy".into())
            .spawn(move || policy.run())
            .map_err(|error| NodeError::Executor { shard: 0, reason: format!("cannot start the policy thread: {error}") })?;
        node.policy = Some(join);
        Ok(node)
    }
}

/// What every shard gets from [`Node::start`], beside its own socket and queues.
struct ShardShared {
    config: Arc<NodeConfig>,
    initial_updates: Vec<FilterUpdate>,
    rate_limit_in_userspace: bool,
    events: Sender<ShardEvent>,
    acks: Sender<ShardAck>,
    /// The CPUs the shards are pinned to, shard i to the i-th (modulo their count).
    cpus: Vec<usize>,
}

/// Where the early-rejection filter runs, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// The XDP program is attached to `interface`, in the driver (`native`) or generic mode.
    Xdp { interface: String, native: bool },
    /// XDP is off for `reason`; the shards run the same checks.
    Userspace { reason: String },
}

impl FilterMode {
    /// Short name for status output: `xdp-native`, `xdp-generic` or `userspace`.
    pub fn name(&self) -> &'static str {
        match self {
            FilterMode::Xdp { native: true, .. } => "xdp-native",
            FilterMode::Xdp { native: false, .. } => "xdp-generic",
            FilterMode::Userspace { .. } => "userspace",
        }
    }
}

impl fmt::Display for FilterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterMode::Xdp { interface, native } => {
                write!(f, "XDP filter: on, {} mode on {interface}", if *native { "native" } else { "generic" })
            }
            FilterMode::Userspace { reason } => write!(f, "XDP filter: off ({reason}); the same checks run in userspace"),
        }
    }
}

/// Loads and attaches the XDP program as `[xdp]` asks and fills its maps from the config, or
/// says why the filter stays in userspace. Explicit `native`/`generic` modes fail the start
/// instead of falling back.
fn set_up_xdp(config: &NodeConfig, initial_updates: &[FilterUpdate]) -> Result<(Option<XdpFilter>, FilterMode), NodeError> {
    let explicit = matches!(config.xdp.mode, XdpMode::Native | XdpMode::Generic);
    let fail = |reason: String| {
        if explicit {
            Err(NodeError::Xdp { reason })
        } else {
            Ok((None, FilterMode::Userspace { reason }))
        }
    };
    if config.xdp.mode == XdpMode::Off {
        return Ok((None, FilterMode::Userspace { reason: "[xdp] mode = \"off\" in the config".into() }));
    }
    let ip = config.listen.ip();
    let interface = match &config.xdp.interface {
        Some(name) => name.clone(),
        None if ip.is_unspecified() => {
            return fail(format!("node.listen is {ip}, any interface: set [xdp] interface to the one carrying Runnel traffic"))
        }
        None if ip.is_loopback() => {
            return fail(format!(
                "node.listen {ip} is on loopback, which has no native XDP: listen on a real or veth interface's address to enable it"
            ))
        }
        None => match interface_holding(ip) {
            Some(name) => name,
            None => return fail(format!("no interface holds node.listen's address {ip}: set [xdp] interface")),
        },
    };
    let mut xdp = match XdpFilter::load() {
        Ok(xdp) => xdp,
        Err(error) => return fail(format!("cannot load the XDP program: {error}")),
    };
    let native = match config.xdp.mode {
        XdpMode::Native => xdp.attach(&interface, AttachMode::Native).map(|()| true),
        XdpMode::Generic => xdp.attach(&interface, AttachMode::Generic).map(|()| false),
        _ => xdp
            .attach(&interface, AttachMode::Native)
            .map(|()| true)
            .or_else(|_| xdp.attach(&interface, AttachMode::Generic).map(|()| false)),
    };
    let native = match native {
        Ok(native) => native,
        Err(error) => return fail(format!("cannot attach to {interface}: {error}")),
    };
    let filled = (|| {
        for shard in 0..config.shards {
            xdp.add_port(config.listen.port() + shard)?;
        }
        for link in &config.links {
            set_xdp_link(&mut xdp, link)?;
        }
        for update in initial_updates {
            apply_to_xdp(&mut xdp, update)?;
        }
        Ok::<(), runnel_ebpf::XdpError>(())
    })();
    if let Err(error) = filled {
        return fail(format!("cannot fill the XDP maps: {error}"));
    }
    Ok((Some(xdp), FilterMode::Xdp { interface, native }))
}

/// The name of the interface that holds `ip`, from getifaddrs.
fn interface_holding(ip: std::net::IpAddr) -> Option<String> {
    let mut addresses: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list and stores its head in `addresses`.
    if unsafe { libc::getifaddrs(&mut addresses) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = addresses;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let address = unsafe {
            match (*entry.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let v4 = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    Some(std::net::IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let v6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    Some(std::net::IpAddr::from(v6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if address == Some(ip) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            found = Some(unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: frees the list getifaddrs allocated, once; nothing points into it any more.
    unsafe { libc::freeifaddrs(addresses) };
    found
}

struct ShardHandle {
    join: Option<ExecutorJoinHandle<Result<(), NodeError>>>,
    counters: Arc<SharedCounters>,
    local_addr: SocketAddr,
}

/// A running node. Stops its shards when dropped; [`NodeHandle::stop`] does the same and
/// reports the first shard error.
pub struct NodeHandle {
    shards: Vec<ShardHandle>,
    stop: Arc<AtomicBool>,
    events: Receiver<ShardEvent>,
    filter_mode: FilterMode,
    policy: Option<JoinHandle<()>>,
    policy_counters: Arc<PolicyCounters>,
    /// To the conductor (the policy thread).
    commands: Sender<(CommandId, Command)>,
    responses: Receiver<Response>,
    /// Responses [`NodeHandle::wait_response`] read while waiting for another id (at most
    /// [`RESPONSE_QUEUE_LENGTH_MAX`]; older ones are discarded and counted beyond that).
    responses_set_aside: Mutex<VecDeque<Response>>,
    next_command_id: AtomicU64,
    command_counters: Arc<CommandCounters>,
    /// Ids of the links added by commands (kept by the conductor).
    commanded_links: Arc<Mutex<BTreeSet<u32>>>,
}

impl fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle").field("local_addrs", &self.local_addrs()).finish()
    }
}

impl NodeHandle {
    /// Each shard's counters (relay and runtime counts of the relay's set), as last published
    /// by the shard (at most one loop turn old).
    pub fn counters(&self) -> Vec<Counters> {
        self.shards.iter().map(|shard| shard.counters.relay()).collect()
    }

    /// Each link's traffic summed over the shards, by link id, as last published (at most
    /// [`crate::shard::LINK_TRAFFIC_INTERVAL_US`] old).
    pub fn link_traffic(&self) -> std::collections::BTreeMap<u32, LinkTraffic> {
        let mut total = std::collections::BTreeMap::new();
        for shard in &self.shards {
            for (link_id, traffic) in shard.counters.links() {
                total.entry(link_id).or_insert_with(LinkTraffic::default).add(&traffic);
            }
        }
        total
    }

    /// Each shard's runtime counters ([`crate::shard::RuntimeCounter`]).
    pub fn runtime_counters(&self) -> Vec<RuntimeCounters> {
        self.shards.iter().map(|shard| shard.counters.runtime()).collect()
    }

    /// The bound address of each shard, in shard order (consecutive ports).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shards.iter().map(|shard| shard.local_addr).collect()
    }

    /// Relay events from all shards (bounded; overflow is counted per shard as
    /// [`crate::shard::RuntimeCounter::EventsDropped`]).
    pub fn events(&self) -> &Receiver<ShardEvent> {
        &self.events
    }

    /// Where the early-rejection filter runs (XDP or userspace, and why).
    pub fn filter_mode(&self) -> &FilterMode {
        &self.filter_mode
    }

    /// XDP verdict counts summed over CPUs, indexed by [`runnel_ebpf::Verdict`] id, as the
    /// policy thread last sampled them (at most ~100 ms old); `None` with XDP off.
    pub fn xdp_verdicts(&self) -> Option<[u64; VERDICT_COUNT]> {
        matches!(self.filter_mode, FilterMode::Xdp { .. })
            .then(|| std::array::from_fn(|index| self.policy_counters.xdp_verdicts[index].load(Ordering::Relaxed)))
    }

    /// The policy thread's counters (quarantines, dropped updates, XDP map errors).
    pub fn policy_counters(&self) -> &PolicyCounters {
        &self.policy_counters
    }

    /// Hands a command to the node's conductor without waiting, and returns its id; its
    /// one [`Response`] arrives later ([`NodeHandle::responses`], [`NodeHandle::wait_response`]).
    /// A full command queue is [`NodeError::CommandQueueFull`] (counted), never a wait.
    pub fn submit(&self, command: Command) -> Result<CommandId, NodeError> {
        let id = CommandId(self.next_command_id.fetch_add(1, Ordering::Relaxed));
        match self.commands.try_send((id, command)) {
            Ok(()) => {
                self.command_counters.increment(CommandCounter::Submitted);
                Ok(id)
            }
            Err(TrySendError::Full(_)) => {
                self.command_counters.increment(CommandCounter::RejectedQueueFull);
                Err(NodeError::CommandQueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(NodeError::Stopped),
        }
    }

    /// Every command's response, in the order they complete (bounded: the conductor takes no
    /// more commands while [`RESPONSE_QUEUE_LENGTH_MAX`] are unread). A caller that reads
    /// this should not also use [`NodeHandle::wait_response`], which reads the same queue.
    pub fn responses(&self) -> &Receiver<Response> {
        &self.responses
    }

    /// Waits up to `timeout` for command `id`'s response and returns its result. Responses
    /// to other commands that arrive meanwhile are set aside for their own `wait_response`.
    pub fn wait_response(&self, id: CommandId, timeout: Duration) -> Result<Result<(), CommandError>, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut set_aside = self.responses_set_aside.lock().expect("no panics while holding it");
                if let Some(position) = set_aside.iter().position(|response| response.id == id) {
                    return Ok(set_aside.remove(position).expect("found").result);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::ResponseTimeout { id, timeout });
            }
            // Short waits, so a response another caller set aside for us is seen soon.
            match self.responses.recv_timeout(left.min(RESPONSE_POLL_INTERVAL)) {
                Ok(response) if response.id == id => return Ok(response.result),
                Ok(response) => self.set_aside(response),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(NodeError::Stopped),
            }
        }
    }

    fn set_aside(&self, response: Response) {
        let mut set_aside = self.responses_set_aside.lock().expect("no panics while holding it");
        if set_aside.len() >= RESPONSE_QUEUE_LENGTH_MAX {
            set_aside.pop_front();
            self.command_counters.increment(CommandCounter::ResponsesDiscarded);
        }
        set_aside.push_back(response);
    }

    /// Submits `command` and waits up to `timeout` for it to complete: for callers with one
    /// command at a time (the CLI, tests). Its error is [`NodeError::Command`].
    pub fn execute(&self, command: Command, timeout: Duration) -> Result<(), NodeError> {
        let name = command.name();
        let id = self.submit(command)?;
        self.wait_response(id, timeout)?.map_err(|error| NodeError::Command { id, command: name, error })
    }

    /// The command interface's counters.
    pub fn command_counters(&self) -> &CommandCounters {
        &self.command_counters
    }

    /// The ids of the links that commands added and did not remove (the config file's links
    /// are not among them), as the shards hold them once the commands in flight are applied.
    /// A control process that connects inherits these from its predecessor.
    pub fn commanded_links(&self) -> Vec<u32> {
        self.commanded_links.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    /// Changes the filter policy (a quarantine, a permission) in every shard and in the XDP
    /// maps, and waits until it has ([`COMMAND_TIMEOUT_DEFAULT`]): `Command::Policy` through
    /// [`NodeHandle::execute`].
    pub fn update_filter(&self, update: FilterUpdate) -> Result<(), NodeError> {
        self.execute(Command::Policy(update), COMMAND_TIMEOUT_DEFAULT)
    }

    /// Starts shard `index` on `socket` and waits until it is receiving; returns the sender
    /// of its command queue, for the policy thread.
    fn start_shard(&mut self, index: u16, socket: UdpSocket, shared: &ShardShared) -> Result<Sender<ShardCommand>, NodeError> {
        let local_addr = socket.local_addr().map_err(|source| NodeError::Bind { address: shared.config.listen, source })?;
        let (commands_sender, commands) = bounded(COMMAND_QUEUE_LENGTH_MAX);
        let counters = Arc::new(SharedCounters::new());
        let (ready_sender, ready) = bounded(1);
        let context = ShardContext {
            index,
            config: shared.config.clone(),
            socket,
            initial_updates: shared.initial_updates.clone(),
            rate_limit_in_userspace: shared.rate_limit_in_userspace,
            stop: self.stop.clone(),
            commands,
            acks: shared.acks.clone(),
            events: shared.events.clone(),
            counters: counters.clone(),
        };
        let cpu = shared.cpus[index as usize % shared.cpus.len()];
        let join = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("runnel-shard-{index}"))
            .io_memory(GLOMMIO_IO_MEMORY)
            .spawn(move || run_shard(context, ready_sender))
            .map_err(|error| executor_error(index, error))?;
        self.shards.push(ShardHandle { join: Some(join), counters, local_addr });
        match ready.recv() {
            Ok(Ok(())) => Ok(commands_sender),
            Ok(Err(error)) => Err(error),
            // The thread ended before reporting: glommio could not build the executor.
            Err(_) => {
                let join = self.shards.last_mut().and_then(|shard| shard.join.take());
                Err(match join.map(ExecutorJoinHandle::join) {
                    Some(Err(error)) => executor_error(index, error),
                    _ => NodeError::Executor { shard: index, reason: "the shard thread ended during setup".into() },
                })
            }
        }
    }

    /// Stops every shard, waits for their threads, and returns the first error a shard hit.
    pub fn stop(mut self) -> Result<(), NodeError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), NodeError> {
        self.stop.store(true, Ordering::Release);
        let mut first_error = None;
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let Some(join) = shard.join.take() else { continue };
            let result = match join.join() {
                Ok(result) => result,
                Err(error) => Err(NodeError::ShardFailed { shard: index as u16, reason: error.to_string() }),
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        // The policy thread sees the stop flag within one tick; dropping it detaches XDP.
        if let Some(policy) = self.policy.take() {
            let _ = policy.join();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// The current soft `RLIMIT_MEMLOCK` in bytes (`u64::MAX` when unlimited or unknown).
pub(crate) fn memlock_limit_bytes() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur
}

fn executor_error(shard: u16, error: GlommioError<()>) -> NodeError {
    match error {
        // glommio 0.9 turns its reactor's MemLockLimit error into an io::Error on the way out
        // of the executor thread; the text is all that is left of it.
        GlommioError::IoError(source) if source.to_string().starts_with("MemLockLimit(") => {
            NodeError::MemlockTooLow { limit_bytes: memlock_limit_bytes(), what: "starting the shard's glommio executor (it needs ≥ 512 KiB)" }
        }
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(limit_bytes, _)) => {
            NodeError::MemlockTooLow { limit_bytes, what: "starting the shard's glommio executor (it needs ≥ 512 KiB)" }
        }
        GlommioError::IoError(source) if matches!(source.raw_os_error(), Some(libc::ENOMEM)) => {
            NodeError::MemlockTooLow { limit_bytes: memlock_limit_bytes(), what: "creating glommio's io_uring rings" }
        }
        GlommioError::IoError(source) if matches!(source.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            NodeError::IoUringUnsupported {
                reason: format!("glommio could not create its io_uring ({source}): set `sysctl kernel.io_uring_disabled=0` and allow io_uring in the container's seccomp profile"),
            }
        }
        other => NodeError::Executor { shard, reason: other.to_string() },
    }
}

/// Refuses kernels older than [`KERNEL_VERSION_MIN`] up front, instead of a shard failing on
/// its first receive.
fn check_kernel() -> Result<(), NodeError> {
    // SAFETY: all-zero is a valid utsname; uname fills it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we pass.
    if unsafe { libc::uname(&mut name) } != 0 {
        return Ok(());
    }
    let release: String = name.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|part| part.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < KERNEL_VERSION_MIN {
        return Err(NodeError::IoUringUnsupported {
            reason: format!(
                "kernel {release} is too old: shards need Linux ≥ {}.{} (io_uring multishot recvmsg, provided-buffer rings)",
                KERNEL_VERSION_MIN.0, KERNEL_VERSION_MIN.1
            ),
        });
    }
    Ok(())
}

/// Binds shard i's socket on `listen` port + i, with `UDP_GRO` and a large receive buffer.
fn bind_sockets(config: &NodeConfig) -> Result<Vec<UdpSocket>, NodeError> {
    (0..config.shards)
        .map(|index| {
            let address = SocketAddr::new(config.listen.ip(), config.listen.port() + index);
            let socket = UdpSocket::bind(address).map_err(|source| match source.kind() {
                io::ErrorKind::AddrInUse => NodeError::AddressInUse { address },
                _ => NodeError::Bind { address, source },
            })?;
            runnel_client::sockopt::set_int(&socket, libc::SOL_UDP, libc::UDP_GRO, 1).map_err(|source| NodeError::SocketOption {
                address,
                option: "UDP_GRO",
                source,
            })?;
            // Best effort: as root the FORCE option ignores net.core.rmem_max; otherwise the
            // kernel silently caps the size there. Credit windows are sized to this buffer.
            let size = SOCKET_RECEIVE_BUFFER_LENGTH as libc::c_int;
            if runnel_client::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
                let _ = runnel_client::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
            }
            Ok(socket)
        })
        .collect()
}

/// The CPUs this process may run on (its affinity mask), in order; all online CPUs if the mask
/// cannot be read.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is an empty cpu_set_t; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the size of the set we own.
    let read = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    let cpus: Vec<usize> = if read {
        // SAFETY: CPU_ISSET reads a bit of the set we own; the index is below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}
