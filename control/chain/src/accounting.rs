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
//! **Boundaries.** Nodes place an epoch's end on their own clocks, so a frame in flight at
//! the boundary can be counted as sent in one epoch and received in the next: an honest
//! receipt can exceed the sender's figure by what the link carries in the nodes' skew. A
//! [`Tolerance`] (none unless [`Operator::with_tolerance`] sets one) credits such a receipt
//! at the sender's figure — never more than the sender claims — and counts it as clamped;
//! beyond the tolerance it is an over-claim.
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

/// How far a receipt may exceed its sender's figures and still be credited (at the
/// sender's figures): `permille` of them plus a fixed slack, per link and epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tolerance {
    pub permille: u32,
    pub bytes: u64,
    pub messages: u64,
}

impl Tolerance {
    /// No excess at all.
    pub const STRICT: Tolerance = Tolerance { permille: 0, bytes: 0, messages: 0 };

    fn allows(slack: u64, permille: u32, sent: u64, received: u64) -> bool {
        let bound = u128::from(sent) * (1000 + u128::from(permille)) / 1000 + u128::from(slack);
        u128::from(received) <= bound
    }

    /// Whether a receipt of `received` bytes and messages fits what was `sent`.
    fn fits(&self, sent: (u64, u64), received: (u64, u64)) -> bool {
        Tolerance::allows(self.bytes, self.permille, sent.0, received.0)
            && Tolerance::allows(self.messages, self.permille, sent.1, received.1)
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
    /// Receipts above their sender's figures but within the [`Tolerance`], credited at the
    /// sender's figures.
    pub clamped: u64,
    /// Cumulative earnings after this epoch: commit its root as `epoch`.
    pub tree: EarningsTree,
}

/// Collects one epoch's reports at a time and settles them into cumulative earnings.
#[derive(Debug)]
pub struct Operator {
    epoch: u64,
    reports_max: usize,
    tolerance: Tolerance,
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
            tolerance: Tolerance::STRICT,
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

    /// Credits receipts up to `tolerance` above their sender's figures (see the module doc).
    pub fn with_tolerance(mut self, tolerance: Tolerance) -> Operator {
        self.tolerance = tolerance;
        self
    }

    /// The epoch being collected.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Moves on to collecting `epoch`, past epochs nobody reported in. Refused if reports of
    /// the current epoch are held (settle them first) or `epoch` is not ahead.
    pub fn skip_to(&mut self, epoch: u64) -> Result<(), ChainError> {
        if epoch <= self.epoch || !self.reports.is_empty() {
            return Err(ChainError::Invalid(format!(
                "cannot skip from epoch {} to {epoch} holding {} reports",
                self.epoch,
                self.reports.len()
            )));
        }
        self.epoch = epoch;
        Ok(())
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
        let (credited_bytes, clamped) = self.credit(&mut rejections);
        let earned = split_pro_rata(budget, &credited_bytes);
        let mut cumulative = self.cumulative.clone();
        let mut allocated = U256::ZERO;
        for (node, amount) in &earned {
            // Cannot overflow: everything allocated is at most `total_funded`.
            allocated += *amount;
            *cumulative.entry(*node).or_default() += *amount;
        }
        let tree = EarningsTree::new(cumulative.iter().map(|(node, amount)| (*node, *amount)))?;
        let settlement = EpochSettlement {
            epoch: self.epoch,
            budget,
            allocated,
            dust: budget - allocated,
            credited_bytes,
            earned,
            rejections,
            clamped,
            tree,
        };
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
    /// sender and the receipts clamped to their sender's figures; rejected links counted
    /// into `rejections`.
    fn credit(&self, rejections: &mut RejectionCounts) -> (BTreeMap<Address, u128>, u64) {
        let mut credited: BTreeMap<Address, u128> = BTreeMap::new();
        let mut clamped = 0;
        for (receiver, report) in &self.reports {
            for receipt in &report.links {
                let sender = receipt.neighbor;
                let Some(sent) = self.reports.get(&sender).and_then(|theirs| theirs.link(receiver)) else {
                    rejections.count(Rejection::UnknownLink);
                    continue;
                };
                let (sent, received) = ((sent.bytes_sent, sent.messages_sent), (receipt.bytes_received, receipt.messages_received));
                if !self.tolerance.fits(sent, received) {
                    rejections.count(Rejection::OverClaim);
                    continue;
                }
                if received.0 > sent.0 || received.1 > sent.1 {
                    clamped += 1;
                }
                let bytes = received.0.min(sent.0);
                if bytes > 0 {
                    *credited.entry(Address::from(sender)).or_default() += u128::from(bytes);
                }
            }
        }
        (credited, clamped)
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

    /// Counts a rejection decided outside `submit` (the [`crate::collector::Collector`]'s).
    pub(crate) fn reject(&mut self, reason: Rejection) -> Rejection {
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

    // Goal: within the tolerance a receipt above the sender's figures is credited at the
    // sender's figures (never more) and counted as clamped; one byte or message beyond it
    // is an over-claim; skip_to moves past unreported epochs only when nothing is held.
    #[test]
    fn boundary_skew_within_the_tolerance_is_clamped() {
        let (a, b, c) = (PublisherKey::generate(), PublisherKey::generate(), PublisherKey::generate());
        let tolerance = Tolerance { permille: 100, bytes: 50, messages: 5 };
        let mut operator = Operator::new(1, 10).unwrap().with_tolerance(tolerance);
        // a sent b 1000 (bound 1000 + 100 + 50 = 1150) and b got 1150: clamped to 1000.
        // a sent c 1000 and c got 1151: one byte over the bound.
        operator.submit(&signed(&a, 1, vec![link(&b, 1_000, 0), link(&c, 1_000, 0)])).unwrap();
        operator.submit(&signed(&b, 1, vec![link(&a, 0, 1_150)])).unwrap();
        let over = LinkTraffic { neighbor: a.address(), bytes_sent: 0, messages_sent: 0, bytes_received: 1_151, messages_received: 100 };
        operator.submit(&signed(&c, 1, vec![over])).unwrap();
        let epoch = operator.settle(U256::from(1_000), U256::from(1_000)).unwrap();
        assert_eq!(epoch.credited_bytes, BTreeMap::from([(address(&a), 1_000)]));
        assert_eq!((epoch.clamped, epoch.rejections.get(Rejection::OverClaim)), (1, 1));
        // Messages have their own bound: 100 sent allows 100 + 10 + 5 = 115.
        let many = LinkTraffic { neighbor: a.address(), bytes_sent: 0, messages_sent: 0, bytes_received: 1_000, messages_received: 116 };
        operator.submit(&signed(&a, 2, vec![link(&b, 1_000, 0)])).unwrap();
        operator.submit(&signed(&b, 2, vec![many])).unwrap();
        assert!(operator.skip_to(9).is_err(), "reports of epoch 2 are held");
        let epoch = operator.settle(U256::ZERO, U256::from(1_000)).unwrap();
        assert_eq!(epoch.rejections.get(Rejection::OverClaim), 1);
        assert!(operator.skip_to(3).is_err(), "not ahead");
        operator.skip_to(9).unwrap();
        assert_eq!(operator.epoch(), 9);
        assert_eq!(operator.submit(&signed(&a, 3, vec![])), Err(Rejection::WrongEpoch));
    }
}
