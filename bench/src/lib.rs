//! # runnel-bench
//!
//! Benchmark programs for Runnel, each comparing against a baseline in the same run and
//! printing a table (and one JSON object for machines). `runnel bench ...` calls these:
//!
//! - [`fanout()`]: one publisher → one node → N subscribers, against `nats-server` under the
//!   same workload with an equally lean client ([`nats`]). Delivered and publish msgs/s, p50/p99
//!   latency at a fixed 10k msgs/s, server CPU% and RSS, and the Runnel/NATS ratio; with the
//!   cargo feature `zenoh` also against Zenoh peer sessions (module `zenoh`, in that build only).
//! - [`latency()`]: one-hop latency, publisher → one node → one subscriber, each publisher
//!   flushing after every message, against `nats-server` in the same mode; with the cost of
//!   one signature and one verification measured in the same run, Runnel's target.
//! - [`relay_chain()`]: publisher → A → B → C → subscriber, throughput through two hops, as a
//!   fraction of [`udp_ceiling()`].
//! - [`udp_ceiling()`]: a minimal forwarder that only moves datagrams (UDP GRO receive, GSO
//!   send): what a relay on this machine could at best forward.
//! - [`sim()`]: a seeded, deterministic simulation of one stream part at thousands of nodes:
//!   the real overlay and relay state machines over a simulated network with latency, loss
//!   and churn; time to mesh, delivery ratio, latency stretch, duplicates per delivery.
//! - [`xdp()`]: the XDP early-rejection filter: ns per verdict by `BPF_PROG_TEST_RUN`, and
//!   legitimate delivery through a node on a veth pair while forged datagrams flood it, with
//!   the filter on and off (needs root).
//!
//! How each number is measured is in `bench/README.md`; results are in `docs/benchmarks.md`.
//!
//! ```no_run
//! let options = runnel_bench::FanoutOptions { subscribers: 10, payload_length: 64, ..Default::default() };
//! let report = runnel_bench::fanout(options)?;
//! report.print_table();
//! println!("{}", report.to_json());
//! # Ok::<(), runnel_bench::BenchError>(())
//! ```
//!
//! Every phase ends by its duration and every server started is a child process killed on
//! drop and by a parent-death signal ([`process::ChildGuard`]), so nothing outlives a run.
//! Prerequisites: `nats-server` (`apt-get install -y nats-server`) for the baseline; a kernel
//! with UDP GSO/GRO (Linux ≥ 5.0) for the ceiling.

pub mod chain;
pub mod cli;
pub mod fanout;
pub mod latency;
pub mod measure;
pub mod nats;
pub mod process;
pub mod relay_chain;
pub mod runnel;
pub mod sim;
pub mod udp_ceiling;
pub mod workload;
pub mod xdp;
#[cfg(feature = "zenoh")]
pub mod zenoh;

pub use chain::{chain, ChainOptions, ChainReport};
pub use fanout::{fanout, FanoutOptions, FanoutReport, SignatureMode};
pub use latency::{latency, LatencyOptions, LatencyReport};
pub use relay_chain::{relay_chain, RelayChainOptions, RelayChainReport};
pub use sim::{sim, SimOptions, SimReport};
pub use udp_ceiling::{udp_ceiling, UdpCeilingOptions, UdpCeilingReport};
pub use xdp::{xdp, FloodRate, XdpOptions, XdpReport};

use runnel_proto::frame::{trailer_length, FRAME_HEADER_LENGTH, MESSAGE_ENTRY_LENGTH, PROOF_DEPTH_MAX};
use runnel_proto::wire::{DATAGRAM_LENGTH_DEFAULT, HEADER_LENGTH};

/// A benchmark that could not run, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError(pub String);

impl BenchError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// Messages of `payload_length` bytes that one 1472-byte datagram carries when packed the way
/// protocol v2 packs a batch-signed stream: one frame (88-byte datagram header, 72-byte frame
/// header, the deepest batch trailer of 65 + 6 × 20 bytes) and per message a 15-byte entry and
/// the payload; at least 1.
pub fn messages_per_datagram(payload_length: usize) -> usize {
    let room = DATAGRAM_LENGTH_DEFAULT - HEADER_LENGTH - FRAME_HEADER_LENGTH - trailer_length(PROOF_DEPTH_MAX);
    (room / (MESSAGE_ENTRY_LENGTH + payload_length)).max(1)
}

/// Segments per UDP GSO send: 44 × 1472 bytes fit the 64 KiB limit of one send.
pub const GSO_SEGMENTS_MAX: usize = 44;

/// A private directory for one benchmark run's configs and logs, removed on drop.
pub struct WorkDir(pub std::path::PathBuf);

impl WorkDir {
    pub fn create(scenario: &str) -> Result<WorkDir, BenchError> {
        let path = std::env::temp_dir().join(format!("runnel-bench-{scenario}-{}-{}", std::process::id(), measure::now_ns()));
        std::fs::create_dir_all(&path).map_err(|e| BenchError::new(format!("cannot create {}: {e}", path.display())))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp directory is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    // Goal: the packing rule matches the issue's formula: (1472-88)/(80+size+65).
    #[test]
    fn packing() {
        assert_eq!(super::messages_per_datagram(64), 14);
        assert_eq!(super::messages_per_datagram(1024), 1);
        assert_eq!(super::messages_per_datagram(4096), 1);
    }
}
