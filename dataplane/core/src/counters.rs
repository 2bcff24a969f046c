//! Dataplane counters: one closed enum with stable ids, a per-shard array, Prometheus text.
//!
//! Each counter is declared once, in the [`counters!`] table below, with its name and a doc
//! line (which `# HELP` and status output reuse). Every counter is incremented somewhere
//! (`runnel-node`'s `counters_used` test checks the sources). Ids are positions in the table
//! and never change meaning within a protocol version; new counters go at the end.

/// Declares every counter once: its id (the position), its Prometheus name and its doc line.
macro_rules! counters {
    ($($variant:ident = $name:literal : $doc:literal,)*) => {
        /// Every counter a shard keeps. The discriminant is the stable id.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Counter {
            $(#[doc = $doc] $variant,)*
        }

        impl Counter {
            /// All counters in id order.
            pub const ALL: [Counter; [$(Counter::$variant),*].len()] = [$(Counter::$variant,)*];

            /// The Prometheus metric name (without the `runnel_` prefix and `_total` suffix).
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// What the counter counts (its doc line), for `# HELP` lines and status output.
            pub fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $doc,)*
                }
            }
        }
    };
}

counters! {
    DatagramsReceived = "datagrams_received": "Datagrams received (each datagram of a GRO-coalesced buffer counts once).",
    DatagramsMalformed = "datagrams_malformed": "Datagrams whose header is not a valid v2 header (or a Nak or IHave body that is not).",
    DatagramsUnknownLink = "datagrams_unknown_link": "Filter: the link id is not one of this node's links.",
    DatagramsBadTag = "datagrams_bad_tag": "Filter: the link tag does not match the header under the link's key.",
    DatagramsReplayed = "datagrams_replayed": "Filter: the link sequence was seen before or is behind the replay window.",
    DatagramsNotJoined = "datagrams_not_joined": "Datagrams for a stream part this shard does not carry (or cannot join).",
    FramesMalformed = "frames_malformed": "Frames that failed validation; the rest of their datagram is dropped.",
    FramesAccepted = "frames_accepted": "Frames that passed dedup, permission and signature checks.",
    FramesDuplicate = "frames_duplicate": "Frames dropped as duplicates, before any hashing or signature work.",
    FramesBadSignature = "frames_bad_signature": "Frames whose publisher signature (or batch proof) failed; their link is quarantined.",
    SignaturesEcdsa = "signatures_ecdsa": "ECDSA checks done: one per message of a single frame, one per batch root.",
    SignaturesCachedRoot = "signatures_cached_root": "Batch frames verified against an already authenticated root (hashes only).",
    FramesForwarded = "frames_forwarded": "Frame copies queued to neighbors.",
    FramesDelivered = "frames_delivered": "Frame copies queued to subscribed clients, in chain order.",
    FramesLost = "frames_lost": "Frame sequences given up: never repaired within the NAK retries, or skipped.",
    DatagramsSent = "datagrams_sent": "Datagrams handed to the socket.",
    DropsLinkQueueFull = "drops_link_queue_full": "Datagrams dropped because a link's outbound queue was full.",
    DropsReorderBufferFull = "drops_reorder_buffer_full": "Frames not held for ordered delivery because a chain's reorder buffer was full.",
    NaksSent = "naks_sent": "Nak datagrams sent for gaps.",
    NaksReceived = "naks_received": "Nak datagrams received.",
    RepairsSent = "repairs_sent": "Frames resent from the repair ring to answer Naks.",
    RepairMisses = "repair_misses": "Nak'ed frame sequences no longer (or never) in the repair ring.",
    SubscribesReceived = "subscribes_received": "Subscribe datagrams received.",
    DropsNeighborsFull = "drops_neighbors_full": "Subscribes refused: the stream part's neighbor or client bound was reached.",
    DropsStreamPartsFull = "drops_stream_parts_full": "Joins refused: the shard's stream part bound was reached.",
    DatagramsSendFailed = "datagrams_send_failed": "Datagrams the kernel refused to send.",
    EventsDropped = "events_dropped": "Events (signature failures, joins) dropped because the event queue was full.",
    ChainsEvicted = "chains_evicted": "Chains forgotten to make room for a new one (the stream part's chain bound).",
    DatagramsNoAddress = "datagrams_no_address": "Datagrams not sent: the link has no address yet (a client not heard from).",
    FramesRepaired = "frames_repaired": "Accepted frames that arrived as repairs (flag FLAG_REPAIR).",
    TailProbesSent = "tail_probes_sent": "Newest frames resent to neighbors because their chain went idle.",
    DatagramsQuarantinedLink = "datagrams_quarantined_link": "Filter: the datagram's link is quarantined.",
    DatagramsQuarantinedPublisher = "datagrams_quarantined_publisher": "Filter: the datagram's single publisher is quarantined.",
    DatagramsNotPermitted = "datagrams_not_permitted": "Filter: the single publisher lacks Publish permission for the restricted stream part, or a client link sent what its admission did not allow (another part, or Data/Subscribe without that access).",
    DatagramsRateLimited = "datagrams_rate_limited": "Filter: the link is over its rate limit.",
    FramesNotPermitted = "frames_not_permitted": "Frames (in multi-publisher datagrams) whose publisher lacks Publish permission.",
    FilterUpdatesRefused = "filter_updates_refused": "Policy updates (quarantine, permission) refused because a filter table was full.",
    FramesTooLarge = "frames_too_large": "Frames not forwarded because they do not fit this node's datagrams (a peer with a larger path MTU).",
    CreditsSent = "credits_sent": "Credit datagrams sent (window grants to a link's sender).",
    CreditsReceived = "credits_received": "Credit datagrams received (window grants from a link's receiver).",
    CreditsWithheld = "credits_withheld": "Grants held back because a neighbor link's queue was backlogged (back-pressure upstream).",
    CreditStalls = "credit_stalls": "Times a link had Data waiting and no credit left.",
    CreditProbesSent = "credit_probes_sent": "Datagrams sent beyond a link's window after waiting for credit (a lost grant cannot stall a link).",
    SlowConsumersCut = "slow_consumers_cut": "Subscribed clients cut off: no credit granted for the slow-consumer timeout.",
    DropsSlowConsumer = "drops_slow_consumer": "Datagrams dropped from the queue of a client that was cut off as a slow consumer.",
    SlowConsumersSkipped = "slow_consumers_skipped": "Subscribed clients skipped ahead (policy skip): no credit for the slow-consumer timeout, queue dropped, still subscribed.",
    DropsSkippedAhead = "drops_skipped_ahead": "Datagrams dropped, oldest first, so a slow client (policy skip) gets the newest data.",
    RepairsRateLimited = "repairs_rate_limited": "Nak'ed frames not resent because the link's repair rate was used up.",
    PrunesSent = "prunes_sent": "Prune datagrams sent: a full frame arrived twice, its second sender's link in that stream part turned lazy.",
    PrunesReceived = "prunes_received": "Prune datagrams received from neighbors (their link in that stream part turned lazy here).",
    GraftsSent = "grafts_sent": "NAKs sent to a lazy neighbor: the link turned eager again (a missing frame was only announced).",
    GraftsReceived = "grafts_received": "NAKs received from a lazy neighbor: the link turned eager again.",
    IhavesSent = "ihaves_sent": "IHave datagrams sent to lazy neighbors (one per lazy neighbor and stream part per receive batch, or per full datagram).",
    IhavesReceived = "ihaves_received": "IHave datagrams received.",
    FramesAnnounced = "frames_announced": "Frame ids announced to lazy neighbors in IHaves instead of sending the frames in full.",
    TreeControlRefused = "tree_control_refused": "IHave/Prune refused: from a client link, for a stream part not joined, naming a chain that does not fit, or sequences beyond the dedup window.",
    NeighborsSilent = "neighbors_silent": "Neighbor interests that expired without a Subscribe refresh (each reported as a NeighborSilent event).",
}

/// Number of counters.
const COUNTER_COUNT: usize = Counter::ALL.len();

/// One shard's counter values, indexed by [`Counter`] id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    values: [u64; COUNTER_COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Self { values: [0; COUNTER_COUNT] }
    }
}

impl Counters {
    #[inline]
    pub fn add(&mut self, counter: Counter, amount: u64) {
        self.values[counter as usize] += amount;
    }

    #[inline]
    pub fn increment(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Adds another shard's values into these (for node-wide totals).
    pub fn merge(&mut self, other: &Counters) {
        for (mine, theirs) in self.values.iter_mut().zip(other.values.iter()) {
            *mine += theirs;
        }
    }

    /// Prometheus text exposition, one `runnel_<name>_total{shard="i"}` line per counter.
    pub fn write_prometheus(&self, shard: usize, out: &mut String) {
        use std::fmt::Write;
        for counter in Counter::ALL {
            let _ = writeln!(out, "runnel_{}_total{{shard=\"{shard}\"}} {}", counter.name(), self.get(counter));
        }
    }

    /// `(name, value)` pairs for JSON status output.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: ids are dense and stable (ALL is in discriminant order) and names are unique.
    #[test]
    fn ids_are_dense_and_names_unique() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        let names: std::collections::HashSet<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
