//! Signed per-epoch traffic reports, the node's half of settlement (docs/settlement.md).
//!
//! Epoch `e` is Unix seconds `[e × epoch_s, (e + 1) × epoch_s)`, the same on every node. At
//! the first status after an epoch ends, the node reports, per neighbor account, the Data its
//! links to that neighbor carried since the previous boundary: the differences of the
//! dataplane's per-link counts (`/status` `traffic`), summed over the links to one neighbor
//! (one per stream part). It signs the report with its own key ([`TrafficReport::sign`]) and
//! keeps the newest [`REPORTS_KEPT`] at `/settlement/reports`. With a settlement operator
//! configured (`--settlement-operator URL`), a [`Pusher`] POSTs each new report to the
//! operator's `/reports`, retrying failures; the reports are signed, so the transport needs
//! no trust.
//!
//! Limits: control asks the dataplane for its counts as soon as an epoch ends, so a boundary
//! is placed a loop turn late (≤ 100 ms) plus the shards' publishing interval (100 ms), on
//! each node's own clock: a frame in flight at the boundary can be counted as sent in one
//! epoch and received in the next; counts of a link removed mid-epoch since its last
//! status are lost; clients are not reported (they are not paid).

use alloy::transports::http::reqwest;
use runnel_node::ipc::WireLinkTraffic;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::receipt::{LinkTraffic, TrafficReport};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reports waiting to be sent to the operator; more are dropped (and counted).
const PUSH_QUEUE: usize = 16;
/// Attempts per report before it is given up (and counted).
const PUSH_ATTEMPTS: u32 = 8;
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// What the pusher did, for `/settlement/reports`.
#[derive(Debug, Default)]
struct PushStats {
    pushed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Sends signed reports to the operator's `POST /reports` from a thread of its own.
#[derive(Debug)]
pub struct Pusher {
    operator: String,
    queue: crossbeam_channel::Sender<(u64, Vec<u8>)>,
    stats: Arc<PushStats>,
}

impl Pusher {
    /// Starts sending to `operator` (its base URL, `http://host:port`).
    pub fn start(operator: &str) -> Result<Pusher, String> {
        let url = format!("{}/reports", operator.trim_end_matches('/'));
        let parsed: reqwest::Url = url.parse().map_err(|e| format!("--settlement-operator {operator:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("--settlement-operator {operator:?}: only http:// and https:// are supported"));
        }
        let client = reqwest::Client::builder().timeout(PUSH_TIMEOUT).build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let (queue, reports) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(PUSH_QUEUE);
        let stats = Arc::new(PushStats::default());
        let thread_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("report-push".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                for (epoch, bytes) in reports {
                    runtime.block_on(push(&client, &parsed, epoch, bytes, &thread_stats));
                }
            })
            .map_err(|e| format!("cannot start the report pusher: {e}"))?;
        Ok(Pusher { operator: operator.to_string(), queue, stats })
    }

    fn send(&self, epoch: u64, bytes: Vec<u8>) {
        if self.queue.try_send((epoch, bytes)).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            *self.stats.last_error.lock().expect("no panics while holding it") =
                Some(format!("epoch {epoch}: {PUSH_QUEUE} reports already waiting for the operator; dropped"));
        }
    }

    fn json(&self) -> Value {
        json!({
            "operator": self.operator,
            "pushed": self.stats.pushed.load(Ordering::Relaxed),
            "refused": self.stats.refused.load(Ordering::Relaxed),
            "failed": self.stats.failed.load(Ordering::Relaxed),
            "last_error": *self.stats.last_error.lock().expect("no panics while holding it"),
        })
    }
}

/// One report to the operator: retried on transport errors and server errors; a refusal
/// (4xx: the operator checked it and said no) is final.
async fn push(client: &reqwest::Client, url: &reqwest::Url, epoch: u64, bytes: Vec<u8>, stats: &PushStats) {
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=PUSH_ATTEMPTS {
        let sent = client.post(url.clone()).header("content-type", "application/octet-stream").body(bytes.clone()).send().await;
        let error = match sent {
            Ok(response) if response.status().is_success() => {
                stats.pushed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                stats.refused.fetch_add(1, Ordering::Relaxed);
                let message = format!("epoch {epoch}: the operator refused the report ({status}): {}", body.trim());
                logln!("runnel control: {message}");
                *stats.last_error.lock().expect("no panics while holding it") = Some(message);
                return;
            }
            Ok(response) => format!("the operator answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        *stats.last_error.lock().expect("no panics while holding it") = Some(format!("epoch {epoch}, attempt {attempt}: {error}"));
        if attempt < PUSH_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(PUSH_BACKOFF_MAX);
        }
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
    logln!("runnel control: epoch {epoch}: gave up sending the report to the operator after {PUSH_ATTEMPTS} attempts");
}

/// Reports kept for the operator to fetch.
pub const REPORTS_KEPT: usize = 64;

pub struct Reporter {
    epoch_s: u64,
    key: PublisherKey,
    /// The epoch the counts since `baseline` belong to, and the counts at its start.
    current: Option<(u64, BTreeMap<u32, WireLinkTraffic>)>,
    reports: VecDeque<(u64, Vec<u8>)>,
    errors: u64,
    pusher: Option<Pusher>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("epoch_s", &self.epoch_s).field("reports", &self.reports.len()).finish()
    }
}

impl Reporter {
    /// Reports every `epoch_s` seconds, signed with `key`, each sent on by `pusher` if any.
    pub fn new(epoch_s: u64, key: PublisherKey, pusher: Option<Pusher>) -> Reporter {
        Reporter { epoch_s: epoch_s.max(1), key, current: None, reports: VecDeque::new(), errors: 0, pusher }
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
                let bytes = signed.encode();
                if let Some(pusher) = &self.pusher {
                    pusher.send(reported, bytes.clone());
                }
                self.reports.push_back((reported, bytes));
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
            "push": self.pusher.as_ref().map_or(Value::Null, Pusher::json),
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
        let mut reporter = Reporter::new(10, key.clone(), None);
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
