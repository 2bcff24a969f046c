//! The earnings Merkle tree (the Monoplasma scheme): one leaf per account over its
//! *cumulative* earnings, whose root the settlement contract stores and whose proofs it
//! checks. Data Unions reuse the same tree for their members' revenue.
//!
//! - leaf = `keccak256(account ‖ cumulative as 32 bytes big-endian)` — Solidity's
//!   `keccak256(abi.encodePacked(address, uint256))`, 52 bytes in;
//! - parent = `keccak256(min(a, b) ‖ max(a, b))` (sorted pair, 64 bytes in), so a proof is
//!   just the siblings from the leaf up, with no left/right flags;
//! - an odd node at the end of a level is carried up unchanged (it has no sibling there, so
//!   its proof skips that level); one leaf: the root is the leaf; no leaf: the root is zero,
//!   which the contract refuses to commit.
//!
//! Leaves are in ascending address order, each account once: entries for the same account
//! are added up (a sum past `uint256` is an error), so the tree of a set of balances is one
//! tree, whoever builds it. Building is O(n) hashes and memory; a proof is O(log n).

use crate::ChainError;
use alloy::primitives::{Address, B256, U256};
use runnel_proto::crypto::keccak256;
use std::collections::BTreeMap;

/// The leaf of `account` with `cumulative` earnings.
pub fn leaf(account: Address, cumulative: U256) -> B256 {
    B256::from(keccak256(&[account.as_slice(), &cumulative.to_be_bytes::<32>()]))
}

/// The parent of two nodes (sorted pair).
pub fn parent(a: &B256, b: &B256) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    B256::from(keccak256(&[low.as_slice(), high.as_slice()]))
}

/// Whether `proof` links `leaf` to `root` — what the contract's `verifyProof` computes.
pub fn verify(root: B256, leaf: B256, proof: &[B256]) -> bool {
    proof.iter().fold(leaf, |node, sibling| parent(&node, sibling)) == root
}

/// Cumulative earnings per account, and the tree over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarningsTree {
    /// Ascending by account, each once.
    entries: Vec<(Address, U256)>,
    /// `levels[0]` are the leaves (in `entries` order), the last level is the root alone;
    /// empty for an empty tree.
    levels: Vec<Vec<B256>>,
    total: U256,
}

impl EarningsTree {
    /// The tree of `entries`; an account listed more than once gets the sum.
    pub fn new(entries: impl IntoIterator<Item = (Address, U256)>) -> Result<EarningsTree, ChainError> {
        let mut merged: BTreeMap<Address, U256> = BTreeMap::new();
        let mut total = U256::ZERO;
        for (account, amount) in entries {
            let slot = merged.entry(account).or_default();
            *slot = slot
                .checked_add(amount)
                .ok_or_else(|| ChainError::Invalid(format!("the earnings of {account:#x} add up to more than a uint256 holds")))?;
            total = total
                .checked_add(amount)
                .ok_or_else(|| ChainError::Invalid("the earnings of all accounts add up to more than a uint256 holds".into()))?;
        }
        let entries: Vec<(Address, U256)> = merged.into_iter().collect();
        let mut levels = Vec::new();
        if !entries.is_empty() {
            levels.push(entries.iter().map(|(account, amount)| leaf(*account, *amount)).collect::<Vec<_>>());
            while let Some(below) = levels.last().filter(|level| level.len() > 1) {
                let above = below.chunks(2).map(|pair| if let [a, b] = pair { parent(a, b) } else { pair[0] }).collect();
                levels.push(above);
            }
        }
        Ok(EarningsTree { entries, levels, total })
    }

    /// The root to commit; zero for an empty tree.
    pub fn root(&self) -> B256 {
        self.levels.last().map_or(B256::ZERO, |top| top[0])
    }

    /// `account`'s proof (siblings from its leaf up), or `None` if it has no leaf.
    pub fn proof(&self, account: Address) -> Option<Vec<B256>> {
        let mut index = self.index(account)?;
        let mut proof = Vec::with_capacity(self.levels.len());
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        Some(proof)
    }

    /// `account`'s cumulative earnings, or `None` if it has no leaf.
    pub fn amount(&self, account: Address) -> Option<U256> {
        self.index(account).map(|index| self.entries[index].1)
    }

    /// Accounts (leaves).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sum of all cumulative earnings: the `totalEarnings` committed with the root.
    pub fn total(&self) -> U256 {
        self.total
    }

    /// `(account, cumulative)`, ascending by account.
    pub fn entries(&self) -> &[(Address, U256)] {
        &self.entries
    }

    fn index(&self, account: Address) -> Option<usize> {
        self.entries.binary_search_by(|(entry, _)| entry.cmp(&account)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(i: u8) -> Address {
        Address::repeat_byte(i)
    }

    fn tree_of(n: u8) -> EarningsTree {
        EarningsTree::new((1..=n).map(|i| (account(i), U256::from(u64::from(i) * 1_000)))).unwrap()
    }

    // Goal: the leaf is keccak256(abi.encodePacked(address, uint256)), laid out by hand.
    #[test]
    fn leaf_is_encode_packed() {
        let mut packed = vec![0xab; 20];
        packed.extend_from_slice(&[0; 31]);
        packed.push(5);
        assert_eq!(leaf(Address::repeat_byte(0xab), U256::from(5)), B256::from(keccak256(&[&packed])));
    }

    // Goal: one leaf — the root is the leaf and the proof is empty.
    #[test]
    fn one_leaf() {
        let tree = tree_of(1);
        assert_eq!(tree.root(), leaf(account(1), U256::from(1_000)));
        assert_eq!(tree.proof(account(1)), Some(vec![]));
        assert!(verify(tree.root(), leaf(account(1), U256::from(1_000)), &[]));
    }

    // Goal: every leaf of trees of 1..=17 leaves (odd ones carried up at several levels)
    // verifies against the root, and a wrong amount or a foreign account does not.
    #[test]
    fn every_size_verifies() {
        for n in 1..=17u8 {
            let tree = tree_of(n);
            assert_eq!(tree.len(), n as usize);
            for i in 1..=n {
                let amount = tree.amount(account(i)).unwrap();
                let proof = tree.proof(account(i)).unwrap();
                assert!(proof.len() <= 5, "{n} leaves: a proof of {}", proof.len());
                assert!(verify(tree.root(), leaf(account(i), amount), &proof), "{n} leaves, leaf {i}");
                assert!(!verify(tree.root(), leaf(account(i), amount + U256::from(1)), &proof), "{n} leaves, leaf {i} inflated");
            }
            assert_eq!(tree.proof(account(200)), None);
        }
    }

    // Goal: three leaves — the third is carried up unchanged and its proof is one node.
    #[test]
    fn odd_node_is_carried_up() {
        let tree = tree_of(3);
        let leaves: Vec<B256> = (1..=3).map(|i| leaf(account(i), U256::from(u64::from(i) * 1_000))).collect();
        assert_eq!(tree.root(), parent(&parent(&leaves[0], &leaves[1]), &leaves[2]));
        assert_eq!(tree.proof(account(3)), Some(vec![parent(&leaves[0], &leaves[1])]));
    }

    // Goal: duplicate accounts are merged (order of input irrelevant), sums past uint256
    // are errors, and the empty tree's root is zero.
    #[test]
    fn duplicates_overflow_and_empty() {
        let merged = EarningsTree::new([(account(2), U256::from(5)), (account(1), U256::from(1)), (account(2), U256::from(7))]).unwrap();
        assert_eq!(merged.entries(), &[(account(1), U256::from(1)), (account(2), U256::from(12))]);
        assert_eq!(merged.total(), U256::from(13));
        assert_eq!(merged, EarningsTree::new([(account(1), U256::from(1)), (account(2), U256::from(12))]).unwrap());
        assert!(EarningsTree::new([(account(1), U256::MAX), (account(1), U256::from(1))]).is_err());
        assert!(EarningsTree::new([(account(1), U256::MAX), (account(2), U256::from(1))]).is_err());
        let empty = EarningsTree::new([]).unwrap();
        assert_eq!((empty.root(), empty.len(), empty.total()), (B256::ZERO, 0, U256::ZERO));
        assert_eq!(empty.proof(account(1)), None);
    }
}
