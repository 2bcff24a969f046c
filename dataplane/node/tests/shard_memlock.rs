//! Its own test binary: it lowers this process's locked-memory limit, which would break any
//! other node started in the same process.

use runnel_node::config::NodeConfig;
use runnel_node::node::{Node, NodeError};

// Goal: with a locked-memory limit too low for io_uring, starting fails with an error that
// names the limit and says how to raise it, instead of panicking in a shard thread.
#[test]
fn memlock_too_low_says_how_to_raise_it() {
    let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) }, 0, "lowering RLIMIT_MEMLOCK");
    let error = (0..50u16)
        .map(|attempt| {
            let port = 20_000 + (std::process::id() % 40_000) as u16 + attempt;
            let config = NodeConfig::parse(&format!("[node]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n")).unwrap();
            Node::start(config).expect_err("must refuse to start")
        })
        .find(|error| !matches!(error, NodeError::AddressInUse { .. }))
        .expect("a free port in 50 tries");
    let message = error.to_string();
    println!("{message}");
    assert!(matches!(error, NodeError::MemlockTooLow { limit_bytes: 65_536, .. }), "{error:?}");
    assert!(message.contains("64 KiB") && message.contains("ulimit -l") && message.contains("LimitMEMLOCK"), "{message}");
}
