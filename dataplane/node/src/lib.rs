//! # runnel-node: a node's dataplane process
//!
//! The I/O half of the fast path: one glommio executor pinned per core, each running a
//! sans-I/O relay (`runnel-core`) on its own io_uring socket ([`shard`]); the policy thread
//! that owns the XDP maps and conducts the commands the control process sends ([`policy`],
//! [`command`], over a unix socket from another process: [`ipc`]); the node handle that starts and stops them ([`node`]); and the node's TOML
//! configuration ([`config`]). It depends on nothing in `control/`.

pub mod command;
mod conductor;
pub mod config;
pub mod ipc;
pub mod node;
pub mod policy;
pub mod shard;
