//! The settlement operator's accounting, with no I/O: signed traffic reports in, each
//! node's cumulative earnings — and the [`EarningsTree`] to commit — out
//! (docs/settlement.md). Time is the caller's: it decides when an epoch ends and calls
//! [`Operator::settle`].
//!
//! **Who earns what.** Node S earns for the bytes neighbor R says it *received from S*, in
//! R's signed report ([`runnel_proto::receipt`]), if S's own report lists R and says it sent
//! R at least that many bytes and messages. A receipt for more than the sender reported
//! sending is rejected ([`Rejection::OverClaim`]); a link only one side lists is rejected
//! ([`Rejection::UnknownLink`], once per one-sided link). So a node cannot earn from its own
//! report alone: it needs a neighbor's receipt, and the neighbor's receipt alone does not
//! pay it either.
//!
//! **How much.** The epoch's budget (DATA wei, at most funded − already earned) is split pro
//! rata to credited bytes, rounded down per node with exact 512-bit intermediate products:
//! the sum never exceeds the budget, and the rounding dust stays unallocated (it is still in
//! the contract's pool for later epochs). Earnings accumulate across epochs.
//!
//! **Reports** are rejected, and counted by [`Rejection`], when they do not decode, are for
//! another epoch, come a second time from the same node, exceed [`Operator`]'s bound of
//! reports per epoch, or are not signed by their node. Cheap checks come first; the ECDSA
//! recovery is last.
//!
//! **Limits.** The operator is trusted to apply these rules (nobody checks its sums
//! on-chain); two colluding neighbors can report any traffic between themselves. See
//! docs/settlement.md for what that means.

use crate::merkle::EarningsTree;
use crate::ChainError;
use alloy::primitives::{Address, U256, U512};
use runnel_proto::crypto::Verifier;
use runnel_proto::receipt::{SignedReport, TrafficReport};
use std::collections::BTreeMap;

/// Why a report, or a link claim in it, was not paid. Stable indexes (the counters' order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// The bytes are not a canonical report.
    Malformed = 0,
    /// The report is for another epoch than the one being collected.
    WrongEpoch = 1,
    /// A report from a node that already reported this epoch.
    DuplicateReport = 2,
    /// More reports than the operator's bound for one epoch.
    TooManyReports = 3,
    /// Not signed by the report's node (forged, altered, or unsigned).
    BadSignature = 4,
    /// A link listed by one side only (or whose other side sent no report).
    UnknownLink = 5,
    /// A receipt for more bytes or messages than the sender reported sending.
    OverClaim = 6,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Malformed,
        Rejection::WrongEpoch,
        Rejection::DuplicateReport,
        Rejection::TooManyReports,
        Rejection::BadSignature,
        Rejection::UnknownLink,
        Rejection::OverClaim,
    ];

    /// Metric-style name.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::WrongEpoch => "wrong_epoch",
            Rejection::DuplicateReport => "duplicate_report",
            Rejection::TooManyReports => "too_many_reports",
            Rejection::BadSignature => "bad_signature",
            Rejection::UnknownLink => "unknown_link",
            Rejection::OverClaim => "over_claim",
        }
    }
}

/// A counter per [`Rejection`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectionCounts([u64; Rejection::ALL.len()]);

impl RejectionCounts {
    pub fn get(&self, reason: Rejection) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (Rejection, u64)> + '_ {
        Rejection::ALL.iter().map(|reason| (*reason, self.get(*reason)))
    }

    fn count(&mut self, reason: Rejection) {
        self.0[reason as usize] += 1;
    }

    fn add(&mut self, other: &RejectionCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

/// What [`Operator::settle`] decided for one epoch.
#[derive(Clone, Debug)]
pub struct EpochSettlement {
    pub epoch: u64,
    pub budget: U256,
    /// The sum of `earned`: at most `budget`.
    pub allocated: U256,
    /// `budget - allocated`: rounding remainders (or the whole budget if nobody was credited).
    pub dust: U256,
    /// Per node: bytes its neighbors' accepted receipts credit it with.
    pub credited_bytes: BTreeMap<Address, u128>,
    /// Per node: this epoch's earnings (nodes with zero left out).
    pub earned: BTreeMap<Address, U256>,
    /// This epoch's rejections, reports and links.
    pub rejections: RejectionCounts,
    /// Cumulative earnings after this epoch: commit its root as `epoch`.
    pub tree: EarningsTree,
}

/// Collects one epoch's reports at a time and settles them into cumulative earnings.
#[derive(Debug)]
pub struct Operator {
    epoch: u64,
    reports_max: usize,
    /// This epoch's accepted reports, by node.
    reports: BTreeMap<[u8; 20], TrafficReport>,
    verifier: Verifier,
    cumulative: BTreeMap<Address, U256>,
    total_earned: U256,
    /// This epoch's rejections so far.
    epoch_rejections: RejectionCounts,
    /// The settled epochs'.
    rejections: RejectionCounts,
}

impl Operator {
    /// Starts collecting `first_epoch` (1 or later), accepting at most `reports_max` reports
    /// per epoch (one per node: the bound on nodes the operator pays).
    pub fn new(first_epoch: u64, reports_max: usize) -> Result<Operator, ChainError> {
        if first_epoch == 0 {
            return Err(ChainError::Invalid("settlement epochs start at 1".into()));
        }
        if reports_max == 0 {
            return Err(ChainError::Invalid("the operator must accept at least one report per epoch".into()));
        }
        Ok(Operator {
            epoch: first_epoch,
            reports_max,
            reports: BTreeMap::new(),
            verifier: Verifier::new(reports_max, 1),
            cumulative: BTreeMap::new(),
            total_earned: U256::ZERO,
            epoch_rejections: RejectionCounts::default(),
            rejections: RejectionCounts::default(),
        })
    }

    /// Starts from cumulative earnings already committed (an operator restarting from the
    /// latest committed tree).
    pub fn resume(first_epoch: u64, reports_max: usize, committed: &EarningsTree) -> Result<Operator, ChainError> {
        let mut operator = Operator::new(first_epoch, reports_max)?;
        operator.cumulative = committed.entries().iter().copied().collect();
        operator.total_earned = committed.total();
        Ok(operator)
    }

    /// The epoch being collected.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Accepts an encoded report from the network; returns its node.
    pub fn submit(&mut self, bytes: &[u8]) -> Result<Address, Rejection> {
        match SignedReport::decode(bytes) {
            Ok(report) => self.submit_report(report),
            Err(_) => Err(self.reject(Rejection::Malformed)),
        }
    }

    /// Accepts a decoded report; returns its node.
    pub fn submit_report(&mut self, signed: SignedReport) -> Result<Address, Rejection> {
        let report = signed.report();
        if report.epoch != self.epoch {
            return Err(self.reject(Rejection::WrongEpoch));
        }
        if self.reports.contains_key(&report.node) {
            return Err(self.reject(Rejection::DuplicateReport));
        }
        if self.reports.len() >= self.reports_max {
            return Err(self.reject(Rejection::TooManyReports));
        }
        if signed.verify(&mut self.verifier).is_err() {
            return Err(self.reject(Rejection::BadSignature));
        }
        let node = report.node;
        self.reports.insert(node, report.clone());
        Ok(Address::from(node))
    }

    /// Reports accepted this epoch.
    pub fn reports(&self) -> usize {
        self.reports.len()
    }

    /// The most the next [`Operator::settle`] may allocate, with `total_funded` DATA wei
    /// funded in the contract: what is funded and not yet earned.
    pub fn budget_available(&self, total_funded: U256) -> U256 {
        total_funded.saturating_sub(self.total_earned)
    }

    /// Settles the epoch being collected with `budget` DATA wei (at most
    /// [`Operator::budget_available`] of `total_funded`), then starts collecting the next.
    pub fn settle(&mut self, budget: U256, total_funded: U256) -> Result<EpochSettlement, ChainError> {
        let available = self.budget_available(total_funded);
        if budget > available {
            return Err(ChainError::Invalid(format!(
                "epoch {}: a budget of {budget} DATA wei is more than the {available} funded and not yet earned",
                self.epoch
            )));
        }
        let mut rejections = self.epoch_rejections;
        let credited_bytes = self.credit(&mut rejections);
        let earned = split_pro_rata(budget, &credited_bytes);
        let mut cumulative = self.cumulative.clone();
        let mut allocated = U256::ZERO;
        for (node, amount) in &earned {
            // Cannot overflow: everything allocated is at most `total_funded`.
            allocated += *amount;
            *cumulative.entry(*node).or_default() += *amount;
        }
        let tree = EarningsTree::new(cumulative.iter().map(|(node, amount)| (*node, *amount)))?;
        let settlement =
            EpochSettlement { epoch: self.epoch, budget, allocated, dust: budget - allocated, credited_bytes, earned, rejections, tree };
        // Nothing fails past this point: the epoch is settled as a whole or not at all.
        self.cumulative = cumulative;
        self.total_earned += allocated;
        self.rejections.add(&rejections);
        self.epoch_rejections = RejectionCounts::default();
        self.reports.clear();
        self.epoch += 1;
        Ok(settlement)
    }

    /// Every receipt of the epoch matched against its sender's report: bytes credited per
    /// sender; rejected links counted into `rejections`.
    fn credit(&self, rejections: &mut RejectionCounts) -> BTreeMap<Address, u128> {
        let mut credited: BTreeMap<Address, u128> = BTreeMap::new();
        for (receiver, report) in &self.reports {
            for receipt in &report.links {
                let sender = receipt.neighbor;
                let Some(sent) = self.reports.get(&sender).and_then(|theirs| theirs.link(receiver)) else {
                    rejections.count(Rejection::UnknownLink);
                    continue;
                };
                if receipt.bytes_received > sent.bytes_sent || receipt.messages_received > sent.messages_sent {
                    rejections.count(Rejection::OverClaim);
                    continue;
                }
                if receipt.bytes_received > 0 {
                    *credited.entry(Address::from(sender)).or_default() += u128::from(receipt.bytes_received);
                }
            }
        }
        credited
    }

    /// `account`'s cumulative earnings.
    pub fn cumulative(&self, account: Address) -> U256 {
        self.cumulative.get(&account).copied().unwrap_or_default()
    }

    /// Everything allocated so far (what the next commit's total will be at least).
    pub fn total_earned(&self) -> U256 {
        self.total_earned
    }

    /// The cumulative earnings as a tree (the last settled epoch's).
    pub fn tree(&self) -> Result<EarningsTree, ChainError> {
        EarningsTree::new(self.cumulative.iter().map(|(node, amount)| (*node, *amount)))
    }

    /// Rejections over every epoch (the one being collected included).
    pub fn rejections(&self) -> RejectionCounts {
        let mut all = self.rejections;
        all.add(&self.epoch_rejections);
        all
    }

    fn reject(&mut self, reason: Rejection) -> Rejection {
        self.epoch_rejections.count(reason);
        reason
    }
}

/// `budget × credited / total credited` per node, rounded down; nodes with zero left out.
pub fn split_pro_rata(budget: U256, credited_bytes: &BTreeMap<Address, u128>) -> BTreeMap<Address, U256> {
    let total: u128 = credited_bytes.values().fold(0u128, |sum, bytes| sum.saturating_add(*bytes));
    if total == 0 || budget.is_zero() {
        return BTreeMap::new();
    }
    let total = U512::from(total);
    credited_bytes
        .iter()
        .filter_map(|(node, bytes)| {
            let product: U512 = budget.widening_mul(U256::from(*bytes));
            // At most `budget`, since bytes ≤ total: the conversion never saturates.
            let share: U256 = (product / total).saturating_to();
            (!share.is_zero()).then_some((*node, share))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::crypto::PublisherKey;
    use runnel_proto::receipt::LinkTraffic;

    fn link(neighbor: &PublisherKey, bytes_sent: u64, bytes_received: u64) -> LinkTraffic {
        LinkTraffic {
            neighbor: neighbor.address(),
            bytes_sent,
            messages_sent: bytes_sent / 10,
            bytes_received,
            messages_received: bytes_received / 10,
        }
    }

    fn signed(key: &PublisherKey, epoch: u64, links: Vec<LinkTraffic>) -> Vec<u8> {
        TrafficReport { epoch, node: key.address(), links }.sign(key).unwrap().encode()
    }

    fn address(key: &PublisherKey) -> Address {
        Address::from(key.address())
    }

    // Goal: two nodes that agree are each paid for what the other received, pro rata.
    #[test]
    fn agreeing_neighbors_are_paid_pro_rata() {
        let (a, b) = (PublisherKey::generate(), PublisherKey::generate());
        let mut operator = Operator::new(1, 10).unwrap();
        operator.submit(&signed(&a, 1, vec![link(&b, 3_000, 1_000)])).unwrap();
        operator.submit(&signed(&b, 1, vec![link(&a, 1_000, 3_000)])).unwrap();
        let epoch = operator.settle(U256::from(4_000), U256::from(10_000)).unwrap();
        assert_eq!(epoch.credited_bytes, BTreeMap::from([(address(&a), 3_000), (address(&b), 1_000)]));
        assert_eq!(epoch.earned, BTreeMap::from([(address(&a), U256::from(3_000)), (address(&b), U256::from(1_000))]));
        assert_eq!((epoch.allocated, epoch.dust), (U256::from(4_000), U256::ZERO));
        assert_eq!(epoch.tree.total(), U256::from(4_000));
        assert_eq!(operator.epoch(), 2);
        assert_eq!(operator.budget_available(U256::from(10_000)), U256::from(6_000));
    }

    // Goal: the rounding dust stays unallocated and the sum never exceeds the budget, for
    // awkward splits and huge budgets (512-bit intermediate products).
    #[test]
    fn pro_rata_rounds_down() {
        let credited: BTreeMap<Address, u128> = (1..=3u8).map(|i| (Address::repeat_byte(i), 1)).collect();
        let split = split_pro_rata(U256::from(100), &credited);
        assert!(split.values().all(|share| *share == U256::from(33)));
        let heavy: BTreeMap<Address, u128> = BTreeMap::from([(Address::repeat_byte(1), u128::MAX - 1), (Address::repeat_byte(2), 1)]);
        let split = split_pro_rata(U256::MAX, &heavy);
        // 2^256 - 1 = (2^128 - 1)(2^128 + 1): both shares are exact, and sum to the budget.
        let unit = U256::from(u128::MAX) + U256::from(2);
        assert_eq!(split[&Address::repeat_byte(2)], unit);
        assert_eq!(split[&Address::repeat_byte(1)], U256::MAX - unit);
        assert_eq!(split.values().try_fold(U256::ZERO, |sum, share| sum.checked_add(*share)), Some(U256::MAX));
        assert!(split_pro_rata(U256::from(100), &BTreeMap::new()).is_empty());
    }

    // Goal: every report-level rejection is an error and a count, and rejected reports
    // change nothing.
    #[test]
    fn bad_reports_are_rejected_and_counted() {
        let (a, b) = (PublisherKey::generate(), PublisherKey::generate());
        let mut operator = Operator::new(5, 2).unwrap();
        assert_eq!(operator.submit(b"not a report"), Err(Rejection::Malformed));
        assert_eq!(operator.submit(&signed(&a, 4, vec![])), Err(Rejection::WrongEpoch));
        let mut forged = signed(&a, 5, vec![link(&b, 10, 10)]);
        forged[40] ^= 1;
        assert_eq!(operator.submit(&forged), Err(Rejection::BadSignature));
        operator.submit(&signed(&a, 5, vec![link(&b, 10, 10)])).unwrap();
        assert_eq!(operator.submit(&signed(&a, 5, vec![])), Err(Rejection::DuplicateReport));
        operator.submit(&signed(&b, 5, vec![])).unwrap();
        assert_eq!(operator.submit(&signed(&PublisherKey::generate(), 5, vec![])), Err(Rejection::TooManyReports));
        let counts = operator.rejections();
        for reason in
            [Rejection::Malformed, Rejection::WrongEpoch, Rejection::BadSignature, Rejection::DuplicateReport, Rejection::TooManyReports]
        {
            assert_eq!(counts.get(reason), 1, "{}", reason.name());
        }
        assert_eq!(operator.reports(), 2);
        // b lists no link to a: a's receipt from b is an unknown link.
        let epoch = operator.settle(U256::from(1), U256::from(1)).unwrap();
        assert_eq!(epoch.rejections.get(Rejection::UnknownLink), 1);
        assert_eq!(epoch.rejections.total(), 6);
        assert!(epoch.earned.is_empty());
        assert_eq!(epoch.dust, U256::from(1));
        assert_eq!(operator.rejections().total(), 6, "lifetime counters keep every epoch's");
    }

    // Goal: a receipt for more than the sender sent pays nothing; the budget cannot exceed
    // what is funded and not yet earned.
    #[test]
    fn over_claims_and_over_budgets() {
        let (a, b) = (PublisherKey::generate(), PublisherKey::generate());
        let mut operator = Operator::new(1, 10).unwrap();
        operator.submit(&signed(&a, 1, vec![link(&b, 500, 0)])).unwrap();
        operator.submit(&signed(&b, 1, vec![link(&a, 0, 900)])).unwrap();
        assert!(operator.settle(U256::from(11), U256::from(10)).is_err());
        assert_eq!(operator.epoch(), 1, "a refused settle changes nothing");
        let epoch = operator.settle(U256::from(10), U256::from(10)).unwrap();
        assert_eq!(epoch.rejections.get(Rejection::OverClaim), 1);
        assert!(epoch.earned.is_empty());
    }
}
