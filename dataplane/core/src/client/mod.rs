//! The client side of a client link, without I/O (`runnel-client` puts it on a socket).
//!
//! - [`Publisher`]: assigns chain, sequence and previous ref, packs messages into frames and
//!   signs them one by one or under Merkle roots of frames.
//! - [`ClientCore`] (time passed in): packs frames into GSO-shaped runs of datagrams, keeps
//!   subscriptions alive, and turns received datagrams into [`Delivery`]s after link tag,
//!   replay, signature and duplicate checks, with repair on both client hops and messages
//!   that span frames joined after ordered delivery.

mod core;
mod link;
mod order;
mod publisher;
mod repair;
mod window;

pub use self::core::{
    ClientCore, ClientCounters, ClientError, CoreOptions, Delivery, OwnedDelivery, CHAINS_MAX, GSO_BYTES_MAX, GSO_SEGMENTS_MAX,
    NAK_DELAY_US, NAK_INTERVAL_US, NAK_RANGES_ANSWERED_MAX, NAK_RANGE_SEQUENCES_MAX, NAK_RETRIES_MAX, REASSEMBLIES_MAX, REORDER_BYTES_MAX,
    REORDER_SEQUENCES_MAX, SEND_QUEUE_BYTES_MAX, SUBSCRIBE_REFRESH_US, SUBSCRIPTIONS_MAX, TAIL_PROBES_MAX, TAIL_PROBE_US, TAIL_QUERIES_MAX,
    TAIL_QUERY_US,
};
pub use self::link::{ClientLinkConfig, DATAGRAM_LENGTH_MIN};
pub use self::publisher::{Outgoing, PublishError, Publisher, SigningMode, FRAMES_PENDING_BYTES_MAX, FRAMES_PER_ROOT_DEFAULT};
pub use self::repair::{REPAIR_AGE_MAX_US, REPAIR_RING_BYTES_MAX};
pub use self::window::{SequenceWindow, WINDOW_LENGTH};
