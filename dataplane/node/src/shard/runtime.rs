//! One shard's loop: its io_uring, its relay, its buffers (see the [`super`] module doc).
//!
//! Hot path vs. control path: commands, timers, counter publication and event draining are
//! done once per loop turn; per completion the loop only hands bytes to the relay and gives
//! the buffer back.

use super::buffers::{read_sockaddr, BufferRing, SendSlot, RECEIVE_CONTROL_LENGTH, RECEIVE_NAME_LENGTH};
use super::{
    RuntimeCounter, RuntimeCounters, ShardAck, ShardCommand, ShardEvent, SharedCounters, RECEIVE_BUFFER_COUNT, SEND_SLOTS,
    WAIT_TIMEOUT_US_MAX,
};
use crate::command::{Command, CommandError};
use crate::config::NodeConfig;
use crate::node::NodeError;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use runnel_core::counters::{Counter, Counters};
use runnel_core::filter::FilterUpdate;
use runnel_core::relay::{Micros, Relay, RelayConfig};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// user_data of the multishot receive; send slots use their index.
const RECEIVE_USER_DATA: u64 = u64::MAX;
/// user_data of the cancel request at shutdown.
const CANCEL_USER_DATA: u64 = u64::MAX - 1;
const BUFFER_GROUP_ID: u16 = 0;
const SUBMISSION_ENTRIES: u32 = 256;
/// Completion queue entries: room for a full burst of receives plus every send slot.
const COMPLETION_ENTRIES: u32 = 4096;
/// How long shutdown waits for the kernel to release buffers before leaking them instead.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the node hands one shard; moved into the shard's thread.
pub(crate) struct ShardContext {
    pub(crate) index: u16,
    pub(crate) config: Arc<NodeConfig>,
    pub(crate) socket: UdpSocket,
    /// Policy updates to apply before the first datagram (permissions from the config).
    pub(crate) initial_updates: Vec<FilterUpdate>,
    /// False when the XDP program meters links.
    pub(crate) rate_limit_in_userspace: bool,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) commands: Receiver<ShardCommand>,
    /// Answers to [`ShardCommand::Apply`], to the conductor.
    pub(crate) acks: Sender<ShardAck>,
    pub(crate) events: Sender<ShardEvent>,
    pub(crate) counters: Arc<SharedCounters>,
}

/// The shard's glommio task: sets up, reports readiness (or the setup error) on `ready`, runs
/// until the node's stop flag is set, then drains the ring.
pub(crate) async fn run_shard(context: ShardContext, ready: Sender<Result<(), NodeError>>) -> Result<(), NodeError> {
    let mut shard = match Shard::new(context) {
        Ok(shard) => shard,
        Err(error) => {
            // The node reports the setup error from `start`; nothing more to do here.
            let _ = ready.send(Err(error));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let result = shard.run().await;
    shard.shut_down();
    result
}

struct Shard {
    // Dropped first: closing the ring ends every request before the memory below goes.
    ring: IoUring,
    buffer_ring: BufferRing,
    receive_header: Box<libc::msghdr>,
    receive_armed: bool,
    send_slots: Box<[SendSlot]>,
    send_free: Vec<usize>,
    /// Cleared for good the first time the kernel rejects a GSO send.
    gso: bool,
    completions: Vec<(u64, i32, u32)>,
    relay: Relay,
    /// Counters of the relay's set that the runtime moves (send failures).
    runtime_relay: Counters,
    runtime: RuntimeCounters,
    /// When the per-link traffic was last published (µs, monotonic).
    links_published_us: Micros,
    context: ShardContext,
}

impl Shard {
    fn new(context: ShardContext) -> Result<Self, NodeError> {
        let ring = build_ring()?;
        let buffer_ring = BufferRing::new(RECEIVE_BUFFER_COUNT, BUFFER_GROUP_ID);
        // SAFETY: `buffer_ring` lives in the Shard beside `ring`; `shut_down` drains the ring
        // before either is dropped, and `ring` is dropped first.
        unsafe { buffer_ring.register(&ring.submitter()) }.map_err(registration_error)?;
        // SAFETY: all-zero is a valid msghdr; multishot recvmsg reads only the name and
        // control lengths from it.
        let mut receive_header: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        receive_header.msg_namelen = RECEIVE_NAME_LENGTH as libc::socklen_t;
        receive_header.msg_controllen = RECEIVE_CONTROL_LENGTH;
        let config = &context.config;
        let mut relay_config = RelayConfig::new(context.index, config.shards, config.datagram_length_max, config.verify);
        relay_config.rate_limit_in_userspace = context.rate_limit_in_userspace;
        relay_config.slow_consumer = config.slow_consumer;
        relay_config.propagation = config.propagation;
        let mut relay = Relay::new(relay_config);
        for link in &config.links {
            relay.add_link(link);
        }
        for update in &context.initial_updates {
            relay.apply_filter_update(update);
        }
        let send_slots: Box<[SendSlot]> = (0..SEND_SLOTS).map(|_| SendSlot::new()).collect();
        Ok(Self {
            ring,
            buffer_ring,
            receive_header,
            receive_armed: false,
            send_slots,
            send_free: (0..SEND_SLOTS).rev().collect(),
            gso: true,
            completions: Vec::with_capacity(COMPLETION_ENTRIES as usize),
            relay,
            runtime_relay: Counters::default(),
            runtime: RuntimeCounters::default(),
            links_published_us: 0,
            context,
        })
    }

    /// CLOCK_MONOTONIC in µs: the clock of the filter's expiries (and of `bpf_ktime_get_ns`).
    fn now_us(&self) -> Micros {
        runnel_ebpf::monotonic_ns() / 1000
    }

    async fn run(&mut self) -> Result<(), NodeError> {
        while !self.context.stop.load(Ordering::Acquire) {
            self.turn()?;
            // Lets other tasks on this executor run; none exist yet, so this is nearly free.
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    /// One loop turn: commands and timers, send what the relay has, wait, receive.
    fn turn(&mut self) -> Result<(), NodeError> {
        let now_us = self.now_us();
        self.handle_commands(now_us);
        if self.relay.poll_timeout().is_some_and(|deadline_us| deadline_us <= now_us) {
            self.relay.handle_timeout(now_us);
        }
        self.relay.flush();
        self.drain_transmits()?;
        self.drain_events();
        if !self.receive_armed {
            self.arm_receive()?;
        }
        self.runtime.increment(RuntimeCounter::LoopTurns);
        self.context.counters.publish(self.relay.counters(), &self.runtime_relay, &self.runtime);
        let now_us = self.now_us();
        if now_us.saturating_sub(self.links_published_us) >= super::LINK_TRAFFIC_INTERVAL_US {
            self.links_published_us = now_us;
            self.context.counters.publish_links(self.relay.link_traffic());
        }
        let wait_us = match self.relay.poll_timeout() {
            Some(deadline_us) => deadline_us.saturating_sub(self.now_us()).min(WAIT_TIMEOUT_US_MAX),
            None => WAIT_TIMEOUT_US_MAX,
        };
        self.wait(wait_us)?;
        self.process_completions();
        Ok(())
    }

    /// Applies every queued command (between receive batches, so the relay sees each one
    /// between two datagrams) and acknowledges those with an id.
    fn handle_commands(&mut self, now_us: Micros) {
        while let Ok(command) = self.context.commands.try_recv() {
            match command {
                ShardCommand::Apply { id, command } => {
                    let result = self.apply(now_us, command);
                    // The channel has room for every command in flight on every shard, so
                    // it is never full; disconnected means the node is stopping.
                    if let Err(TrySendError::Full(_)) = self.context.acks.try_send(ShardAck { id, result }) {
                        panic!("shard {}: the ack queue is full, though it holds every command in flight", self.context.index);
                    }
                }
                ShardCommand::Filter(update) => {
                    self.relay.apply_filter_update(&update);
                }
                ShardCommand::ExpireFilter => self.relay.expire_filter(now_us),
            }
            self.runtime.increment(RuntimeCounter::CommandsHandled);
        }
    }

    /// One command's effect on this shard's relay; the conductor checked it already.
    fn apply(&mut self, now_us: Micros, command: Command) -> Result<(), CommandError> {
        let shard = self.context.index;
        match command {
            Command::AddLink(link) => self.relay.add_link(&link),
            Command::RemoveLink { link_id } => self.relay.remove_link(link_id),
            Command::Join { part } => {
                if !self.relay.join(now_us, part) {
                    return Err(CommandError::StreamPartsFull { part, shard, limit: self.relay.config().stream_parts_max });
                }
            }
            Command::Leave { part } => {
                if !self.relay.leave(&part) {
                    return Err(CommandError::NotJoined { part, shard });
                }
            }
            Command::Policy(update) => {
                if !self.relay.apply_filter_update(&update) {
                    return Err(CommandError::FilterTableFull { shard });
                }
            }
        }
        Ok(())
    }

    /// Submits queued SQEs and waits up to `wait_us` for at least one completion.
    fn wait(&mut self, wait_us: u64) -> Result<(), NodeError> {
        let timespec = types::Timespec::new().sec(wait_us / 1_000_000).nsec(((wait_us % 1_000_000) * 1_000) as u32);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            // Timed out, interrupted, or completions backed up: all mean "look at the queue".
            Err(error) if matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(error) => Err(self.failure("io_uring_enter (wait)", error)),
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> Result<(), NodeError> {
        loop {
            // SAFETY: every SQE we build points at memory owned by this Shard (the receive
            // msghdr, a send slot, the buffer ring) that outlives the request: send slots are
            // reused only after their completion, the rest only go after `shut_down`.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit().map_err(|error| self.failure("io_uring_enter (submit)", error))?;
        }
    }

    fn arm_receive(&mut self) -> Result<(), NodeError> {
        let fd = types::Fd(self.context.socket.as_raw_fd());
        let entry = opcode::RecvMsgMulti::new(fd, &*self.receive_header, BUFFER_GROUP_ID).build().user_data(RECEIVE_USER_DATA);
        self.push(entry)?;
        self.receive_armed = true;
        Ok(())
    }

    /// Handles every completion in the queue, then hands the used receive buffers back.
    fn process_completions(&mut self) {
        self.completions.clear();
        self.completions.extend(self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
        if self.completions.is_empty() {
            return;
        }
        let now_us = self.now_us();
        for index in 0..self.completions.len() {
            let (user_data, result, flags) = self.completions[index];
            match user_data {
                RECEIVE_USER_DATA => self.on_receive(now_us, result, flags),
                CANCEL_USER_DATA => {}
                slot => self.on_send(slot as usize, result),
            }
        }
        self.buffer_ring.publish();
    }

    fn on_receive(&mut self, now_us: Micros, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            // The kernel ended the multishot receive; the next turn arms it again.
            self.receive_armed = false;
            self.runtime.increment(RuntimeCounter::ReceiveRearms);
        }
        if result < 0 {
            match -result {
                libc::ENOBUFS => self.runtime.increment(RuntimeCounter::ReceiveBuffersExhausted),
                libc::ECANCELED => {}
                _ => self.runtime.increment(RuntimeCounter::ReceiveErrors),
            }
            return;
        }
        let Some(buffer_id) = cqueue::buffer_select(flags) else {
            self.runtime.increment(RuntimeCounter::ReceiveErrors);
            return;
        };
        let bytes = self.buffer_ring.buffer(buffer_id, result as usize);
        match io_uring::types::RecvMsgOut::parse(bytes, &self.receive_header) {
            Ok(out) if !out.is_payload_truncated() && !out.is_name_data_truncated() => match read_sockaddr(out.name_data()) {
                Some(from) => {
                    let payload = out.payload_data();
                    self.runtime.increment(RuntimeCounter::ReceiveCompletions);
                    self.runtime.add(RuntimeCounter::ReceiveBytes, payload.len() as u64);
                    self.relay.handle_receive(now_us, from, payload);
                }
                None => self.runtime.increment(RuntimeCounter::ReceivesTruncated),
            },
            _ => self.runtime.increment(RuntimeCounter::ReceivesTruncated),
        }
        self.buffer_ring.provide(buffer_id);
    }

    fn on_send(&mut self, index: usize, result: i32) {
        assert!(index < SEND_SLOTS, "completion for unknown send slot {index}");
        self.runtime.increment(RuntimeCounter::SendCompletions);
        if result < 0 {
            let slot = &self.send_slots[index];
            if slot.gso && matches!(-result, libc::EIO | libc::EINVAL) {
                // This path (device, route, or kernel) does not take GSO: stop using it and
                // send these datagrams one by one.
                self.gso = false;
                self.runtime.increment(RuntimeCounter::GsoFallbacks);
                self.send_one_by_one(index);
            } else {
                self.runtime_relay.add(Counter::DatagramsSendFailed, slot.segments as u64);
            }
        }
        self.send_free.push(index);
    }

    /// Sends slot `index`'s datagrams with one non-blocking `sendmsg` each (the no-GSO path).
    fn send_one_by_one(&mut self, index: usize) {
        let fd = self.context.socket.as_raw_fd();
        let slot = &self.send_slots[index];
        let mut failed = 0;
        for segment in 0..slot.segments {
            let header = slot.single(segment);
            // SAFETY: `header` points at the slot's live iovecs and sockaddr; sendmsg does
            // not retain them.
            if unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT) } < 0 {
                failed += 1;
            }
        }
        self.runtime_relay.add(Counter::DatagramsSendFailed, failed);
    }

    /// Moves the relay's transmits into send slots and submits them as one batch. When every
    /// slot is in flight, waits for completions (and handles any receives among them).
    fn drain_transmits(&mut self) -> Result<(), NodeError> {
        let mut queued = false;
        loop {
            let Some(index) = self.send_free.pop() else {
                self.runtime.increment(RuntimeCounter::SendSlotsFull);
                self.wait(WAIT_TIMEOUT_US_MAX)?;
                queued = false;
                self.process_completions();
                continue;
            };
            let slot = &mut self.send_slots[index];
            // Hands back the datagrams of this slot's last (completed) send, takes the next.
            let Some(transmit) = self.relay.poll_gather(&mut slot.gather) else {
                self.send_free.push(index);
                break;
            };
            let header = slot.prepare(transmit.destination, transmit.segment_size, self.gso);
            if transmit.segments > 1 && !self.gso {
                self.send_one_by_one(index);
                self.send_free.push(index);
                continue;
            }
            let fd = types::Fd(self.context.socket.as_raw_fd());
            self.push(opcode::SendMsg::new(fd, header).build().user_data(index as u64))?;
            queued = true;
        }
        if queued {
            self.ring.submit().map_err(|error| self.failure("io_uring_enter (submit sends)", error))?;
        }
        Ok(())
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.relay.poll_event() {
            if self.context.events.try_send(ShardEvent { shard: self.context.index, event }).is_err() {
                self.runtime.increment(RuntimeCounter::EventsDropped);
            }
        }
    }

    /// Cancels the receive and waits for in-flight sends so the kernel no longer touches our
    /// buffers; if that does not finish within [`DRAIN_TIMEOUT`], leaks them instead.
    fn shut_down(mut self) {
        if self.receive_armed {
            let cancel = opcode::AsyncCancel::new(RECEIVE_USER_DATA).build().user_data(CANCEL_USER_DATA);
            let _ = self.push(cancel);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while (self.receive_armed || self.send_free.len() < SEND_SLOTS) && Instant::now() < deadline {
            if self.wait(WAIT_TIMEOUT_US_MAX).is_err() {
                break;
            }
            self.process_completions();
        }
        self.context.counters.publish(self.relay.counters(), &self.runtime_relay, &self.runtime);
        self.context.counters.publish_links(self.relay.link_traffic());
        let drained = !self.receive_armed && self.send_free.len() == SEND_SLOTS;
        let Shard { ring, buffer_ring, send_slots, receive_header, .. } = self;
        drop(ring);
        if !drained {
            // The kernel may still write into these; never free memory it can reach.
            std::mem::forget(buffer_ring);
            std::mem::forget(send_slots);
            std::mem::forget(receive_header);
        }
    }

    fn failure(&self, what: &str, error: std::io::Error) -> NodeError {
        NodeError::ShardFailed { shard: self.context.index, reason: format!("{what}: {error}") }
    }
}

/// A ring for one thread: single issuer with deferred task work (completions are posted only
/// when this thread waits, which is when it wants them), falling back to a plain ring on
/// kernels without those flags.
fn build_ring() -> Result<IoUring, NodeError> {
    let tuned = IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_cqsize(COMPLETION_ENTRIES).build(SUBMISSION_ENTRIES);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(COMPLETION_ENTRIES).build(SUBMISSION_ENTRIES).map_err(setup_error)
        }
        Err(error) => Err(setup_error(error)),
    }
}

/// Maps an `io_uring_setup` failure to what the operator must change.
fn setup_error(error: std::io::Error) -> NodeError {
    match error.raw_os_error() {
        Some(libc::ENOMEM) => NodeError::MemlockTooLow { limit_bytes: crate::node::memlock_limit_bytes(), what: "creating the shard's io_uring" },
        Some(libc::ENOSYS) => NodeError::IoUringUnsupported {
            reason: "io_uring_setup is not available (kernel built without io_uring, or a container's seccomp profile blocks it): run on Linux ≥ 6.0 and allow io_uring_setup/io_uring_enter/io_uring_register".into(),
        },
        Some(libc::EPERM) => NodeError::IoUringUnsupported {
            reason: "io_uring is disabled for this process: set `sysctl kernel.io_uring_disabled=0` (or add the user to kernel.io_uring_group), and allow io_uring in the container's seccomp profile".into(),
        },
        _ => NodeError::IoUringUnsupported { reason: format!("io_uring_setup failed: {error}") },
    }
}

/// Maps a buffer-ring registration failure to what the operator must change.
fn registration_error(error: std::io::Error) -> NodeError {
    match error.raw_os_error() {
        Some(libc::ENOMEM | libc::EPERM) => {
            NodeError::MemlockTooLow { limit_bytes: crate::node::memlock_limit_bytes(), what: "registering the receive buffer ring" }
        }
        Some(libc::EINVAL) | Some(libc::ENOSYS) => NodeError::IoUringUnsupported {
            reason: format!("registering a provided-buffer ring failed ({error}): needs Linux ≥ 5.19; multishot recvmsg needs ≥ 6.0"),
        },
        _ => NodeError::IoUringUnsupported { reason: format!("registering the receive buffer ring failed: {error}") },
    }
}
