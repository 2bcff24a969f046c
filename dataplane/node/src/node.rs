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
//! - commands ([`NodeHandle::join_stream_part`]) go over a bounded channel per shard;
//! - relay events arrive on one bounded channel ([`NodeHandle::events`]); when it is full the
//!   shard drops the event and counts it ([`crate::shard::RuntimeCounter::EventsDropped`]);
//! - the early-rejection filter: [`Node::start`] loads the XDP program and attaches it to the
//!   interface holding `node.listen` (native, else generic; `[xdp]` in the config), or runs
//!   the same checks in userspace and says why ([`NodeHandle::filter_mode`]). A policy thread
//!   ([`crate::policy`]) owns the XDP maps, quarantines links and publishers whose signatures
//!   fail, and broadcasts policy updates ([`NodeHandle::update_filter`]) to the shards;
//! - stop sets a flag every shard checks at least every
//!   [`WAIT_TIMEOUT_US_MAX`](crate::shard::WAIT_TIMEOUT_US_MAX) µs, then joins the threads.
//!
//! # Limits
//! Linux ≥ 6.0; locked-memory limit ≥ 512 KiB (glommio's check); one UDP socket per shard,
//! so the node uses `shards` consecutive ports.

use crate::config::{permission_updates, shard_of, NodeConfig, XdpMode};
use crate::policy::{apply_to_xdp, Policy, PolicyCounters};
use crate::shard::runtime::{run_shard, ShardContext};
use crate::shard::{
    RuntimeCounters, ShardCommand, ShardEvent, SharedCounters, COMMAND_QUEUE_LENGTH_MAX, EVENT_QUEUE_LENGTH_MAX,
    SOCKET_RECEIVE_BUFFER_LENGTH,
};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use glommio::{ExecutorJoinHandle, GlommioError, LocalExecutorBuilder, Placement, ReactorErrorKind};
use runnel_core::counters::Counters;
use runnel_core::filter::FilterUpdate;
use runnel_ebpf::{AttachMode, XdpFilter, VERDICT_COUNT};
use runnel_proto::stream::StreamPartKey;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Bytes glommio preallocates per executor for its own (storage) I/O; shards do their network
/// I/O on their own ring, so glommio's 10 MiB default would only cost locked memory.
const GLOMMIO_IO_MEMORY: usize = 256 << 10;
/// Policy updates that may wait for the policy thread.
pub const POLICY_QUEUE_LENGTH_MAX: usize = 4096;
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
    /// The shard's command queue is full (it is stuck or flooded with commands).
    CommandQueueFull { shard: u16 },
    /// `[xdp] mode` asked for native or generic XDP and it could not be set up.
    Xdp { reason: String },
    /// The policy thread's update queue is full.
    PolicyQueueFull,
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
            NodeError::CommandQueueFull { shard } => {
                write!(f, "shard {shard}'s command queue is full ({COMMAND_QUEUE_LENGTH_MAX} commands): retry later")
            }
            NodeError::Xdp { reason } => write!(f, "XDP filter: {reason} (or set [xdp] mode = \"auto\" to fall back, \"off\" for userspace checks)"),
            NodeError::PolicyQueueFull => write!(f, "the policy thread's update queue is full ({POLICY_QUEUE_LENGTH_MAX} updates): retry later"),
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
        let cpus = allowed_cpus();
        let initial_updates = permission_updates(&config);
        let (xdp, filter_mode) = set_up_xdp(&config, &initial_updates)?;
        let (shard_events_sender, shard_events) = bounded(EVENT_QUEUE_LENGTH_MAX);
        let (events_sender, events) = bounded(EVENT_QUEUE_LENGTH_MAX);
        let (updates_sender, updates) = bounded(POLICY_QUEUE_LENGTH_MAX);
        let config = Arc::new(config);
        // Dropping `node` on any error below stops and joins the shards started so far.
        let mut node = NodeHandle {
            shards: Vec::with_capacity(sockets.len()),
            stop: Arc::new(AtomicBool::new(false)),
            events,
            shard_count: config.shards,
            filter_mode,
            policy: None,
            policy_updates: updates_sender,
            policy_counters: Arc::new(PolicyCounters::default()),
        };
        let rate_limit_in_userspace = xdp.is_none();
        for (index, socket) in sockets.into_iter().enumerate() {
            let shard = index as u16;
            let local_addr = socket.local_addr().map_err(|source| NodeError::Bind { address: config.listen, source })?;
            let (commands_sender, commands) = bounded(COMMAND_QUEUE_LENGTH_MAX);
            let counters = Arc::new(SharedCounters::new());
            let (ready_sender, ready) = bounded(1);
            let context = ShardContext {
                index: shard,
                config: config.clone(),
                socket,
                initial_updates: initial_updates.clone(),
                rate_limit_in_userspace,
                stop: node.stop.clone(),
                commands,
                events: shard_events_sender.clone(),
                counters: counters.clone(),
            };
            let join = LocalExecutorBuilder::new(Placement::Fixed(cpus[index % cpus.len()]))
                .name(&format!("runnel-shard-{index}"))
                .io_memory(GLOMMIO_IO_MEMORY)
                .spawn(move || run_shard(context, ready_sender))
                .map_err(|error| executor_error(shard, error))?;
            node.shards.push(ShardHandle { join: Some(join), commands: commands_sender, counters, local_addr });
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                // The thread ended before reporting: glommio could not build the executor.
                Err(_) => {
                    let join = node.shards.last_mut().and_then(|s| s.join.take());
                    return Err(match join.map(ExecutorJoinHandle::join) {
                        Some(Err(error)) => executor_error(shard, error),
                        _ => NodeError::Executor { shard, reason: "the shard thread ended during setup".into() },
                    });
                }
            }
        }
        let policy = Policy {
            xdp,
            shards: node.shards.iter().map(|shard| shard.commands.clone()).collect(),
            events_in: shard_events,
            events_out: events_sender,
            updates_in: updates,
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
            let role = match link.role {
                crate::config::LinkRole::Neighbor => runnel_ebpf::ROLE_NEIGHBOR,
                crate::config::LinkRole::Client => runnel_ebpf::ROLE_CLIENT,
            };
            xdp.set_link(link.id, &runnel_ebpf::LinkEntry::new(link.key.0, role, link.rate_datagrams_per_s, link.burst_datagrams))?;
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
    commands: Sender<ShardCommand>,
    counters: Arc<SharedCounters>,
    local_addr: SocketAddr,
}

/// A running node. Stops its shards when dropped; [`NodeHandle::stop`] does the same and
/// reports the first shard error.
pub struct NodeHandle {
    shards: Vec<ShardHandle>,
    stop: Arc<AtomicBool>,
    events: Receiver<ShardEvent>,
    shard_count: u16,
    filter_mode: FilterMode,
    policy: Option<JoinHandle<()>>,
    policy_updates: Sender<FilterUpdate>,
    policy_counters: Arc<PolicyCounters>,
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

    /// Asks the shard that owns `key` to join that stream part.
    pub fn join_stream_part(&self, key: StreamPartKey) -> Result<(), NodeError> {
        let shard = shard_of(&key, self.shard_count);
        match self.shards[shard as usize].commands.try_send(ShardCommand::Join(key)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(NodeError::CommandQueueFull { shard }),
            Err(TrySendError::Disconnected(_)) => Err(NodeError::ShardFailed { shard, reason: "the shard has stopped".into() }),
        }
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

    /// Changes the filter policy (a quarantine, a permission) in every shard and in the XDP
    /// maps. This is how a permission source (the config today, the chain later) feeds the
    /// node.
    pub fn update_filter(&self, update: FilterUpdate) -> Result<(), NodeError> {
        self.policy_updates.try_send(update).map_err(|_| NodeError::PolicyQueueFull)
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
            // Best effort: the kernel silently caps this at net.core.rmem_max.
            let _ =
                runnel_client::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_RECEIVE_BUFFER_LENGTH as libc::c_int);
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
