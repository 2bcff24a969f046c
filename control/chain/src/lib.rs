//! # runnel-chain
//!
//! Runnel's side of the chain (docs/decisions-chain.md): who may publish to and subscribe
//! to a stream is what the existing network's `StreamRegistryV5` says, and nodes are paid in
//! the DATA token.
//!
//! - [`anvil`]: a real local chain node for tests and `runnel dev`.
//! - [`rpc`]: the JSON-RPC client (alloy) with timeouts on every request and transaction.
//! - [`contracts`]: bindings of the registry and the token, and their local deployment.
//! - [`permissions`]: the registry's permissions rebuilt from its events, reorgs included.
//! - [`registry`]: the writes `runnel stream create|grant|revoke` make.
//! - [`merkle`]: the earnings tree (Monoplasma) whose roots settlement commits.
//! - [`settlement`]: the RunnelSettlement contract: funding, commits, withdrawals.
//! - [`accounting`]: the operator's sans-I/O accounting: signed traffic reports in,
//!   cumulative earnings out (docs/settlement.md).
//! - [`collector`]: the operator's intake: reports as they arrive, epochs closing on the
//!   operator's clock.
//!
//! The chain is never on the dataplane's path: the control process turns the book into
//! filter updates, which the dataplane and its XDP maps enforce as table lookups.

pub mod accounting;
pub mod anvil;
pub mod collector;
pub mod contracts;
pub mod merkle;
pub mod permissions;
pub mod registry;
pub mod rpc;
pub mod settlement;

use alloy::primitives::TxHash;
use std::fmt;

/// Why a chain operation failed; each says what was attempted.
#[derive(Debug)]
pub enum ChainError {
    /// Local setup: a missing binary or artifact, a bad URL or key.
    Setup(String),
    /// The JSON-RPC endpoint failed or timed out.
    Rpc { endpoint: String, method: String, reason: String },
    /// The node refused the transaction before it was pending (a revert in gas estimation,
    /// a bad nonce, no funds).
    Rejected { what: String, reason: String },
    /// The transaction was sent but no receipt came in time.
    Pending { what: String, hash: TxHash, reason: String },
    /// The transaction was mined and reverted.
    Reverted { what: String, hash: TxHash },
    /// A dry run (`eth_call`) of the transaction reverted with one of the contract's own
    /// errors; nothing was sent. `error` is the Solidity error's name (`NothingOwed`).
    Contract { what: String, error: &'static str, reason: String },
    /// An input from the user or the chain that makes no sense.
    Invalid(String),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Setup(message) | ChainError::Invalid(message) => f.write_str(message),
            ChainError::Rpc { endpoint, method, reason } => write!(f, "chain RPC {method} at {endpoint} failed: {reason}"),
            ChainError::Rejected { what, reason } => write!(f, "{what}: the chain refused the transaction: {reason}"),
            ChainError::Pending { what, hash, reason } => write!(f, "{what}: transaction {hash:#x} has no receipt: {reason}"),
            ChainError::Reverted { what, hash } => write!(f, "{what}: transaction {hash:#x} reverted"),
            ChainError::Contract { what, error, reason } => write!(f, "{what}: the contract refuses it ({error}): {reason}"),
        }
    }
}

impl std::error::Error for ChainError {}
