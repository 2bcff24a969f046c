//! The settlement operator's intake, with no I/O: reports arrive whenever nodes send them,
//! epochs close on the operator's clock. Time is the caller's (Unix seconds), so a test or a
//! simulation drives it exactly.
//!
//! Epoch `e` is Unix seconds `[e × epoch_s, (e + 1) × epoch_s)`, as on the nodes
//! (`control/src/traffic_reports.rs`); a node sends its report of `e` just after `e` ends.
//! The operator keeps taking reports of `e` for `collect_s` seconds after that, then
//! settles it ([`Collector::due`], [`Collector::settle`]). A report of a later epoch that
//! arrives while an earlier one is still being collected (a window longer than an epoch, or
//! an operator catching up) is held — at most `ahead_max` of them — and given to the
//! [`Operator`] when its epoch comes. Epochs nobody reported in are skipped, not settled.

use crate::accounting::{EpochSettlement, Operator, Rejection};
use crate::ChainError;
use alloy::primitives::{Address, U256};
use runnel_proto::receipt::SignedReport;
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Collector {
    operator: Operator,
    epoch_s: u64,
    collect_s: u64,
    /// Reports of epochs after the one being collected, by epoch.
    ahead: BTreeMap<u64, Vec<SignedReport>>,
    ahead_held: usize,
    ahead_max: usize,
}

impl Collector {
    /// Takes reports for `operator`'s epoch (and later ones), epochs of `epoch_s` seconds,
    /// each collected until `collect_s` seconds after its end.
    pub fn new(operator: Operator, epoch_s: u64, collect_s: u64, ahead_max: usize) -> Result<Collector, ChainError> {
        if epoch_s == 0 {
            return Err(ChainError::Invalid("a settlement epoch must last at least a second".into()));
        }
        Ok(Collector { operator, epoch_s, collect_s, ahead: BTreeMap::new(), ahead_held: 0, ahead_max })
    }

    /// A report from the network at `now_unix_s`: its node and epoch, or why it was refused
    /// (counted in the operator's rejections). A held report's signature is checked when its
    /// epoch is collected.
    pub fn accept(&mut self, bytes: &[u8], now_unix_s: u64) -> Result<(Address, u64), Rejection> {
        let Ok(signed) = SignedReport::decode(bytes) else {
            return Err(self.operator.reject(Rejection::Malformed));
        };
        let (epoch, node) = (signed.report().epoch, Address::from(signed.report().node));
        // A report of an epoch that has not begun yet is a clock far off, or a lie.
        if epoch > self.operator.epoch() && epoch <= now_unix_s / self.epoch_s {
            if self.ahead_held >= self.ahead_max {
                return Err(self.operator.reject(Rejection::TooManyReports));
            }
            self.ahead.entry(epoch).or_default().push(signed);
            self.ahead_held += 1;
            return Ok((node, epoch));
        }
        self.operator.submit_report(signed).map(|node| (node, epoch))
    }

    /// The epoch to settle at `now_unix_s`: the one being collected, once its window has
    /// closed and it holds reports. Closed epochs without reports are skipped on the way.
    pub fn due(&mut self, now_unix_s: u64) -> Option<u64> {
        // The first epoch whose collection window is still open.
        let open = now_unix_s.saturating_sub(self.collect_s) / self.epoch_s;
        loop {
            let epoch = self.operator.epoch();
            if epoch >= open {
                return None;
            }
            if self.operator.reports() > 0 {
                return Some(epoch);
            }
            let next = self.ahead.keys().next().copied().unwrap_or(open).min(open);
            self.operator.skip_to(next).ok()?;
            self.release(next);
        }
    }

    /// Settles the epoch being collected (see [`Operator::settle`]) and starts the next.
    pub fn settle(&mut self, budget: U256, total_funded: U256) -> Result<EpochSettlement, ChainError> {
        let settled = self.operator.settle(budget, total_funded)?;
        self.release(self.operator.epoch());
        Ok(settled)
    }

    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// Reports held for later epochs.
    pub fn held(&self) -> usize {
        self.ahead_held
    }

    /// Gives the operator the reports held for `epoch`, now being collected.
    fn release(&mut self, epoch: u64) {
        if let Some(reports) = self.ahead.remove(&epoch) {
            self.ahead_held -= reports.len();
            for report in reports {
                // Refusals (a bad signature, a duplicate) are counted by the operator.
                let _ = self.operator.submit_report(report);
            }
        }
        // Anything held for an epoch already passed can never be collected.
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() >= epoch {
                break;
            }
            let stale = entry.remove();
            self.ahead_held -= stale.len();
            for _ in stale {
                self.operator.reject(Rejection::WrongEpoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::crypto::PublisherKey;
    use runnel_proto::receipt::{LinkTraffic, TrafficReport};

    fn report(key: &PublisherKey, epoch: u64, neighbor: &PublisherKey, sent: u64, received: u64) -> Vec<u8> {
        let link = LinkTraffic {
            neighbor: neighbor.address(),
            bytes_sent: sent,
            messages_sent: sent / 10,
            bytes_received: received,
            messages_received: received / 10,
        };
        TrafficReport { epoch, node: key.address(), links: vec![link] }.sign(key).unwrap().encode()
    }

    // Goal: an epoch is settled only once its window has closed, with the reports that came
    // in it; a later epoch's early report is held and counted when its epoch comes; reports
    // from the future, malformed ones and too many held ones are refused and counted.
    #[test]
    fn epochs_close_on_the_operators_clock() {
        let (a, b) = (PublisherKey::generate(), PublisherKey::generate());
        // Epochs of 10 s, collected 15 s past their end: epoch 10 is [100, 110), closes at 125.
        let mut collector = Collector::new(Operator::new(10, 8).unwrap(), 10, 15, 2).unwrap();
        assert_eq!(collector.accept(&report(&a, 10, &b, 1000, 0), 110), Ok((Address::from(a.address()), 10)));
        assert_eq!(collector.accept(&report(&b, 10, &a, 0, 1000), 111).map(|(_, e)| e), Ok(10));
        // Epoch 11's report at 121, while 10 is still open: held.
        assert_eq!(collector.accept(&report(&a, 11, &b, 500, 0), 121).map(|(_, e)| e), Ok(11));
        assert_eq!(collector.held(), 1);
        assert_eq!(collector.accept(&report(&a, 13, &b, 1, 0), 121), Err(Rejection::WrongEpoch), "epoch 13 has not begun");
        assert_eq!(collector.accept(b"junk", 121), Err(Rejection::Malformed));
        assert_eq!(collector.due(124), None, "epoch 10's window is open until 125");
        assert_eq!(collector.due(125), Some(10));
        let settled = collector.settle(U256::from(100), U256::from(1000)).unwrap();
        assert_eq!(settled.earned.get(&Address::from(a.address())), Some(&U256::from(100)));
        assert_eq!((collector.operator().epoch(), collector.operator().reports(), collector.held()), (11, 1, 0));
        assert_eq!(collector.accept(&report(&b, 11, &a, 0, 500), 126).map(|(_, e)| e), Ok(11));
        assert_eq!(collector.due(134), None);
        assert_eq!(collector.due(135), Some(11));
        let settled = collector.settle(U256::from(100), U256::from(1000)).unwrap();
        assert_eq!(settled.tree.amount(Address::from(a.address())), Some(U256::from(200)), "cumulative");
        let counts = collector.operator().rejections();
        assert_eq!((counts.get(Rejection::WrongEpoch), counts.get(Rejection::Malformed)), (1, 1));
    }

    // Goal: closed epochs nobody reported in are skipped (not settled) up to the next one
    // with held reports or the first still open; the held reports' bound is kept.
    #[test]
    fn empty_epochs_are_skipped_and_holding_is_bounded() {
        let (a, b) = (PublisherKey::generate(), PublisherKey::generate());
        let mut collector = Collector::new(Operator::new(1, 8).unwrap(), 10, 5, 2).unwrap();
        // Nothing for epochs 1..=4; reports of 5 arrive at 62 (5 is [50, 60)).
        collector.accept(&report(&a, 5, &b, 10, 0), 62).unwrap();
        collector.accept(&report(&b, 5, &a, 0, 10), 62).unwrap();
        assert_eq!(collector.accept(&report(&a, 6, &b, 10, 0), 62), Err(Rejection::TooManyReports), "two held at most");
        assert_eq!(collector.due(64), None, "epoch 5's window closes at 65");
        assert_eq!(collector.operator().epoch(), 5, "epochs 1 to 4 skipped");
        assert_eq!(collector.due(65), Some(5));
        collector.settle(U256::ZERO, U256::ZERO).unwrap();
        assert_eq!(collector.due(1000), None);
        assert_eq!(collector.operator().epoch(), 99, "skipped to the first open epoch");
        assert_eq!(collector.operator().rejections().get(Rejection::TooManyReports), 1);
    }
}
