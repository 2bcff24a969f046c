//! Dataplane counters: one closed enum with stable ids, a per-shard array, Prometheus text.
//!
//! Every counter is incremented somewhere (a test in `relay` checks that a scripted scenario
//! moves each one). Ids are the enum discriminants and never change meaning; new counters
//! get new ids at the end.

/// Every counter a shard keeps. The discriminant is the stable id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Counter {
    DatagramsReceived = 0,
    DatagramsMalformed = 1,
    DatagramsUnknownLink = 2,
    DatagramsBadTag = 3,
    DatagramsReplayed = 4,
    DatagramsNotJoined = 5,
    RecordsMalformed = 6,
    RecordsAccepted = 7,
    RecordsDuplicate = 8,
    RecordsBadSignature = 9,
    SignaturesEcdsa = 10,
    SignaturesCachedRoot = 11,
    RecordsForwarded = 12,
    RecordsDelivered = 13,
    RecordsLost = 14,
    DatagramsSent = 15,
    DropsLinkQueueFull = 16,
    DropsReorderBufferFull = 17,
    NaksSent = 18,
    NaksReceived = 19,
    RepairsSent = 20,
    RepairMisses = 21,
    FragmentsReceived = 22,
    FragmentsDropped = 23,
    ReassembliesCompleted = 24,
    ReassembliesExpired = 25,
    SubscribesReceived = 26,
    DropsNeighborsFull = 27,
    DropsStreamPartsFull = 28,
    DatagramsSendFailed = 29,
    EventsDropped = 30,
    ChainsEvicted = 31,
    DatagramsNoAddress = 32,
    RecordsRepaired = 33,
    TailProbesSent = 34,
    /// Filter: the datagram's link is quarantined.
    DatagramsQuarantinedLink = 35,
    /// Filter: the datagram's single publisher is quarantined.
    DatagramsQuarantinedPublisher = 36,
    /// Filter: the single publisher lacks Publish permission for the restricted stream part.
    DatagramsNotPermitted = 37,
    /// Filter: the link is over its rate limit.
    DatagramsRateLimited = 38,
    /// A record (in a multi-publisher datagram) whose publisher lacks Publish permission.
    RecordsNotPermitted = 39,
    /// Policy updates (quarantine, permission) refused because a filter table was full.
    FilterUpdatesRefused = 40,
}

impl Counter {
    /// All counters in id order.
    pub const ALL: [Counter; 41] = [
        Counter::DatagramsReceived,
        Counter::DatagramsMalformed,
        Counter::DatagramsUnknownLink,
        Counter::DatagramsBadTag,
        Counter::DatagramsReplayed,
        Counter::DatagramsNotJoined,
        Counter::RecordsMalformed,
        Counter::RecordsAccepted,
        Counter::RecordsDuplicate,
        Counter::RecordsBadSignature,
        Counter::SignaturesEcdsa,
        Counter::SignaturesCachedRoot,
        Counter::RecordsForwarded,
        Counter::RecordsDelivered,
        Counter::RecordsLost,
        Counter::DatagramsSent,
        Counter::DropsLinkQueueFull,
        Counter::DropsReorderBufferFull,
        Counter::NaksSent,
        Counter::NaksReceived,
        Counter::RepairsSent,
        Counter::RepairMisses,
        Counter::FragmentsReceived,
        Counter::FragmentsDropped,
        Counter::ReassembliesCompleted,
        Counter::ReassembliesExpired,
        Counter::SubscribesReceived,
        Counter::DropsNeighborsFull,
        Counter::DropsStreamPartsFull,
        Counter::DatagramsSendFailed,
        Counter::EventsDropped,
        Counter::ChainsEvicted,
        Counter::DatagramsNoAddress,
        Counter::RecordsRepaired,
        Counter::TailProbesSent,
        Counter::DatagramsQuarantinedLink,
        Counter::DatagramsQuarantinedPublisher,
        Counter::DatagramsNotPermitted,
        Counter::DatagramsRateLimited,
        Counter::RecordsNotPermitted,
        Counter::FilterUpdatesRefused,
    ];

    /// The Prometheus metric name (without the `runnel_` prefix and `_total` suffix).
    pub fn name(self) -> &'static str {
        match self {
            Counter::DatagramsReceived => "datagrams_received",
            Counter::DatagramsMalformed => "datagrams_malformed",
            Counter::DatagramsUnknownLink => "datagrams_unknown_link",
            Counter::DatagramsBadTag => "datagrams_bad_tag",
            Counter::DatagramsReplayed => "datagrams_replayed",
            Counter::DatagramsNotJoined => "datagrams_not_joined",
            Counter::RecordsMalformed => "records_malformed",
            Counter::RecordsAccepted => "records_accepted",
            Counter::RecordsDuplicate => "records_duplicate",
            Counter::RecordsBadSignature => "records_bad_signature",
            Counter::SignaturesEcdsa => "signatures_ecdsa",
            Counter::SignaturesCachedRoot => "signatures_cached_root",
            Counter::RecordsForwarded => "records_forwarded",
            Counter::RecordsDelivered => "records_delivered",
            Counter::RecordsLost => "records_lost",
            Counter::DatagramsSent => "datagrams_sent",
            Counter::DropsLinkQueueFull => "drops_link_queue_full",
            Counter::DropsReorderBufferFull => "drops_reorder_buffer_full",
            Counter::NaksSent => "naks_sent",
            Counter::NaksReceived => "naks_received",
            Counter::RepairsSent => "repairs_sent",
            Counter::RepairMisses => "repair_misses",
            Counter::FragmentsReceived => "fragments_received",
            Counter::FragmentsDropped => "fragments_dropped",
            Counter::ReassembliesCompleted => "reassemblies_completed",
            Counter::ReassembliesExpired => "reassemblies_expired",
            Counter::SubscribesReceived => "subscribes_received",
            Counter::DropsNeighborsFull => "drops_neighbors_full",
            Counter::DropsStreamPartsFull => "drops_stream_parts_full",
            Counter::DatagramsSendFailed => "datagrams_send_failed",
            Counter::EventsDropped => "events_dropped",
            Counter::ChainsEvicted => "chains_evicted",
            Counter::DatagramsNoAddress => "datagrams_no_address",
            Counter::RecordsRepaired => "records_repaired",
            Counter::TailProbesSent => "tail_probes_sent",
            Counter::DatagramsQuarantinedLink => "datagrams_quarantined_link",
            Counter::DatagramsQuarantinedPublisher => "datagrams_quarantined_publisher",
            Counter::DatagramsNotPermitted => "datagrams_not_permitted",
            Counter::DatagramsRateLimited => "datagrams_rate_limited",
            Counter::RecordsNotPermitted => "records_not_permitted",
            Counter::FilterUpdatesRefused => "filter_updates_refused",
        }
    }
}

/// One shard's counter values, indexed by [`Counter`] id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    values: [u64; Counter::ALL.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Self { values: [0; Counter::ALL.len()] }
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
