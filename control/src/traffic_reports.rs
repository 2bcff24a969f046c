//! Signed per-epoch traffic reports, the node's half of settlement (docs/settlement.md).
//!
//! Epoch `e` is Unix seconds `[e × epoch_s, (e + 1) × epoch_s)`, the same on every node. At
//! the first status after an epoch ends, the node reports, per neighbor account, the Data its
//! links to that neighbor carried since the previous boundary: the differences of the
//! dataplane's per-link counts (`/status` `traffic`), summed over the links to one neighbor
//! (one per stream part). It signs the report with its own key ([`TrafficReport::sign`]) and
//! keeps the newest [`REPORTS_KEPT`] for the settlement operator, who fetches them from
//! `/settlement/reports`: they are signed, so the transport needs no trust.
//!
//! Limits: control asks the dataplane for its counts as soon as an epoch ends, so a boundary
//! is placed a loop turn late (≤ 100 ms) plus the shards' publishing interval (100 ms), on
//! each node's own clock: a frame in flight at the boundary can be counted as sent in one
//! epoch and received in the next; counts of a link removed mid-epoch since its last
//! status are lost; clients are not reported (they are not paid).

use runnel_node::ipc::WireLinkTraffic;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::receipt::{LinkTraffic, TrafficReport};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};

/// Reports kept for the operator to fetch.
pub const REPORTS_KEPT: usize = 64;

pub struct Reporter {
    epoch_s: u64,
    key: PublisherKey,
    /// The epoch the counts since `baseline` belong to, and the counts at its start.
    current: Option<(u64, BTreeMap<u32, WireLinkTraffic>)>,
    reports: VecDeque<(u64, Vec<u8>)>,
    errors: u64,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("epoch_s", &self.epoch_s).field("reports", &self.reports.len()).finish()
    }
}

impl Reporter {
    pub fn new(epoch_s: u64, key: PublisherKey) -> Reporter {
        Reporter { epoch_s: epoch_s.max(1), key, current: None, reports: VecDeque::new(), errors: 0 }
    }

    /// The epoch at `now_unix_s` if it is past the one being counted: time for a fresh status,
    /// so the boundary's counts are taken right at it.
    pub fn boundary_due(&self, now_unix_s: u64) -> Option<u64> {
        let epoch = now_unix_s / self.epoch_s;
        self.current.as_ref().filter(|(counting, _)| epoch > *counting).map(|_| epoch)
    }

    /// Takes the latest per-link counts at `now_unix_s`, with the neighbor account of each
    /// neighbor link; signs the report of the epoch that ended, if one did. Returns its epoch.
    pub fn observe(&mut self, now_unix_s: u64, links: &BTreeMap<u32, WireLinkTraffic>, neighbors: &BTreeMap<u32, [u8; 20]>) -> Option<u64> {
        let epoch = now_unix_s / self.epoch_s;
        let Some((reported, baseline)) = self.current.take() else {
            self.current = Some((epoch, links.clone()));
            return None;
        };
        if epoch <= reported {
            self.current = Some((reported, baseline));
            return None;
        }
        let mut by_neighbor: BTreeMap<[u8; 20], LinkTraffic> = BTreeMap::new();
        for (link_id, now) in links {
            let Some(neighbor) = neighbors.get(link_id) else { continue };
            // A count below the baseline is a link made again since: all of it is new.
            let before = baseline.get(link_id).filter(|b| b.bytes_sent <= now.bytes_sent && b.bytes_received <= now.bytes_received);
            let delta = |now: u64, before: Option<u64>| now - before.unwrap_or(0).min(now);
            let entry = by_neighbor.entry(*neighbor).or_insert_with(|| LinkTraffic { neighbor: *neighbor, ..LinkTraffic::default() });
            entry.bytes_sent += delta(now.bytes_sent, before.map(|b| b.bytes_sent));
            entry.messages_sent += delta(now.frames_sent, before.map(|b| b.frames_sent));
            entry.bytes_received += delta(now.bytes_received, before.map(|b| b.bytes_received));
            entry.messages_received += delta(now.frames_received, before.map(|b| b.frames_received));
        }
        self.current = Some((epoch, links.clone()));
        let report = TrafficReport {
            epoch: reported.max(1),
            node: self.key.address(),
            links: by_neighbor.into_values().filter(|t| t.bytes_sent + t.bytes_received > 0).collect(),
        };
        match report.sign(&self.key) {
            Ok(signed) => {
                if self.reports.len() == REPORTS_KEPT {
                    self.reports.pop_front();
                }
                self.reports.push_back((reported, signed.encode()));
                Some(reported)
            }
            Err(error) => {
                self.errors += 1;
                logln!("runnel control: cannot sign the traffic report of epoch {reported}: {error}");
                None
            }
        }
    }

    /// `/settlement/reports`: the node, the epoch length and the kept reports (hex).
    pub fn json(&self) -> Value {
        json!({
            "node": runnel_proto::crypto::address_hex(&self.key.address()),
            "epoch_s": self.epoch_s,
            "sign_errors": self.errors,
            "reports": self.reports.iter().map(|(epoch, bytes)| json!({ "epoch": epoch, "report": hex::encode(bytes) })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::receipt::SignedReport;

    fn traffic(link_id: u32, sent: u64, received: u64) -> WireLinkTraffic {
        WireLinkTraffic { link_id, frames_sent: sent / 100, bytes_sent: sent, frames_received: received / 100, bytes_received: received }
    }

    // Goal: an epoch's report holds the differences since its start, per neighbor account
    // (links to one neighbor summed, clients left out, a re-made link counted whole), signed
    // by the node; nothing is reported within an epoch or for the first, unobserved start.
    #[test]
    fn reports_are_per_epoch_deltas_per_neighbor() {
        let key = PublisherKey::generate();
        let mut reporter = Reporter::new(10, key.clone());
        let (a, b) = ([0xaa; 20], [0xbb; 20]);
        let neighbors = BTreeMap::from([(1, a), (2, a), (3, b)]);
        let links = |entries: &[WireLinkTraffic]| entries.iter().map(|t| (t.link_id, *t)).collect::<BTreeMap<_, _>>();
        assert_eq!(reporter.observe(105, &links(&[traffic(1, 1000, 0), traffic(3, 500, 500), traffic(9, 7000, 0)]), &neighbors), None);
        assert_eq!(reporter.observe(109, &links(&[traffic(1, 1500, 0)]), &neighbors), None, "same epoch");
        // Epoch 10 ends: link 1 +1000, link 2 new (all 300 count), link 3 re-made (200 < 500: whole), link 9 a client.
        let now = links(&[traffic(1, 2000, 100), traffic(2, 300, 0), traffic(3, 200, 100), traffic(9, 9000, 0)]);
        assert_eq!(reporter.observe(111, &now, &neighbors), Some(10));
        let json = reporter.json();
        let bytes = hex::decode(json["reports"][0]["report"].as_str().unwrap()).unwrap();
        let signed = SignedReport::decode(&bytes).unwrap();
        signed.verify(&mut runnel_proto::crypto::Verifier::default()).unwrap();
        let report = signed.report();
        assert_eq!((report.epoch, report.node), (10, key.address()));
        assert_eq!(report.links.len(), 2);
        assert_eq!(report.link(&a).map(|t| (t.bytes_sent, t.bytes_received)), Some((1300, 100)));
        assert_eq!(report.link(&b).map(|t| (t.bytes_sent, t.bytes_received)), Some((200, 100)));
        // The next epoch starts from these counts.
        assert_eq!(reporter.observe(125, &now, &neighbors), Some(11));
        let bytes = hex::decode(reporter.json()["reports"][1]["report"].as_str().unwrap()).unwrap();
        assert!(SignedReport::decode(&bytes).unwrap().report().links.is_empty(), "no traffic in epoch 11");
    }
}
