//! Adaptive batching: a publisher thread that signs and sends as soon as it is free.
//!
//! [`PublisherThread::publish`] copies a message into a bounded queue and returns. The thread
//! owns a publishing [`UdpClient`]; it waits for the first message, takes every other message
//! already waiting (up to [`BATCH_MESSAGES_MAX`]), publishes them and flushes: one signature
//! (per message, or one Merkle root in batch mode) over what accumulated, one GSO send. So a
//! message that arrives while the thread is idle leaves at once — its latency is one queue
//! hop, one signature and one send — and messages that arrive while a signature or a send is
//! in progress, or while the node's credit is used up, accumulate and leave together.
//! Nothing waits on a timer; batches are as large as the load makes them (Zenoh's adaptive
//! batching, applied to signing too).
//!
//! Back-pressure reaches the caller: the thread's `publish` blocks on the node's credit, the
//! queue fills, and [`PublisherThread::publish`] blocks ([`PublisherThread::try_publish`]
//! returns `WouldBlock`). While idle the thread keeps answering the node's NAKs and sending
//! tail probes ([`UdpClient::poll`] at the client's next timer).

use crate::udp::UdpClient;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use runnel_core::client::{ClientCounters, Outgoing};
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{ContentType, Encryption};
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

/// Messages that may wait for the publisher thread.
pub const QUEUE_MESSAGES_MAX: usize = 65_536;
/// Most messages one flush takes (then the thread flushes and takes the rest).
pub const BATCH_MESSAGES_MAX: usize = 4096;
/// Longest the idle thread waits before it looks at the client's timers (repair upkeep).
const IDLE_WAIT_MAX: Duration = Duration::from_millis(10);

/// One message, owned, on its way to the thread.
struct Queued {
    key: StreamPartKey,
    timestamp_ms: u64,
    content_type: ContentType,
    encryption: Encryption,
    group_key_id: Vec<u8>,
    payload: Vec<u8>,
}

impl Queued {
    fn new(key: &StreamPartKey, message: &Outgoing<'_>) -> Self {
        Self {
            key: *key,
            timestamp_ms: message.timestamp_ms,
            content_type: message.content_type,
            encryption: message.encryption,
            group_key_id: message.group_key_id.to_vec(),
            payload: message.payload.to_vec(),
        }
    }

    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            timestamp_ms: self.timestamp_ms,
            content_type: self.content_type,
            encryption: self.encryption,
            group_key_id: &self.group_key_id,
            payload: &self.payload,
        }
    }
}

/// A publishing [`UdpClient`] on its own thread, fed through a bounded queue.
#[derive(Debug)]
pub struct PublisherThread {
    queue: Option<Sender<Queued>>,
    thread: Option<JoinHandle<io::Result<ClientCounters>>>,
}

impl PublisherThread {
    /// Moves `client` (a publisher: it must not subscribe) onto a new thread. `linger` is how
    /// long the thread keeps answering NAKs after [`PublisherThread::finish`] (see
    /// [`UdpClient::linger`]).
    pub fn spawn(client: UdpClient, linger: Duration) -> io::Result<Self> {
        let (queue, receiver) = crossbeam_channel::bounded(QUEUE_MESSAGES_MAX);
        let thread = std::thread::Builder::new().name("runnel-publisher".into()).spawn(move || run(client, receiver, linger))?;
        Ok(Self { queue: Some(queue), thread: Some(thread) })
    }

    /// Queues a message for `key`; blocks while the queue is full (the node's credit paces
    /// the thread, and the thread paces this). An error means the thread has stopped: its
    /// error is what [`PublisherThread::finish`] returns.
    pub fn publish(&self, key: &StreamPartKey, message: &Outgoing<'_>) -> io::Result<()> {
        let queue = self.queue.as_ref().expect("open until finish");
        queue.send(Queued::new(key, message)).map_err(|_| stopped())
    }

    /// [`PublisherThread::publish`] without blocking: `WouldBlock` while the queue is full.
    pub fn try_publish(&self, key: &StreamPartKey, message: &Outgoing<'_>) -> io::Result<()> {
        let queue = self.queue.as_ref().expect("open until finish");
        match queue.try_send(Queued::new(key, message)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(io::Error::new(io::ErrorKind::WouldBlock, "the publisher queue is full")),
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }

    /// Messages waiting for the thread.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, Sender::len)
    }

    /// Sends everything queued, lingers, stops the thread and returns its counters.
    pub fn finish(mut self) -> io::Result<ClientCounters> {
        self.queue.take();
        let thread = self.thread.take().expect("joined once");
        thread.join().unwrap_or_else(|_| Err(io::Error::other("the publisher thread panicked")))
    }
}

impl Drop for PublisherThread {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the publisher thread stopped (see finish() for its error)")
}

/// The thread: take what waits, publish it, flush; keep the client's repair upkeep going.
fn run(mut client: UdpClient, queue: Receiver<Queued>, linger: Duration) -> io::Result<ClientCounters> {
    loop {
        let first = match queue.recv_timeout(IDLE_WAIT_MAX) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                client.poll()?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        client.publish(&first.key, &first.outgoing())?;
        for queued in queue.try_iter().take(BATCH_MESSAGES_MAX - 1) {
            client.publish(&queued.key, &queued.outgoing())?;
        }
        client.flush()?;
    }
    client.flush()?;
    client.linger(linger)?;
    Ok(client.counters().clone())
}
