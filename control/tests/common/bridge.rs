//! Network namespaces on a bridge for the multi-node process tests (needs root), and
//! children that die with the test. Included by the tests that use them
//! (`#[path = "common/bridge.rs"] mod bridge;`).

use std::process::Child;
use std::time::Duration;

/// Runs `ip ARGS` (iproute2), failing the test with its stderr.
pub fn ip(args: &[&str]) {
    let output = std::process::Command::new("ip").args(args).output().expect("iproute2's ip");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// Starts a child that gets SIGKILL if the test's thread ends first.
pub fn spawn(command: &mut std::process::Command) -> Child {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) in the child between fork and exec touches no memory.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().expect("spawn")
}

/// Network namespaces on one bridge, for multi-node tests (needs root). `hub` holds the
/// bridge `br0`; each node's namespace has `eth0` on it, up, with its address.
pub struct Bridged {
    pub hub: runnel_bench::xdp::Netns,
    pub nodes: Vec<runnel_bench::xdp::Netns>,
}

/// Creates `count` node namespaces with `eth0` = `address(index)`/24 on a bridge in a hub
/// namespace (whose `br0` gets `hub_address`/24 if given), and a watchdog that deletes this
/// process's namespaces and exits if the test is still running after `limit`.
pub fn bridged(
    label: &'static str,
    count: usize,
    address: impl Fn(usize) -> String,
    hub_address: Option<&str>,
    limit: Duration,
) -> Bridged {
    use runnel_bench::xdp::{remove_live_namespaces, Netns, NETNS_PREFIX};
    assert!(unsafe { libc::geteuid() } == 0, "this test creates network namespaces: run it as root");
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{label}: still running after {limit:?}; deleting the namespaces and exiting");
        remove_live_namespaces();
        std::process::exit(1);
    });
    let pid = std::process::id();
    let hub = Netns::create(&format!("{NETNS_PREFIX}{pid}-{label}-hub")).unwrap();
    ip(&["-n", hub.name(), "link", "add", "br0", "type", "bridge"]);
    if let Some(hub_address) = hub_address {
        ip(&["-n", hub.name(), "addr", "add", &format!("{hub_address}/24"), "dev", "br0"]);
    }
    ip(&["-n", hub.name(), "link", "set", "br0", "up"]);
    ip(&["-n", hub.name(), "link", "set", "lo", "up"]);
    let nodes = (0..count)
        .map(|index| {
            let netns = Netns::create(&format!("{NETNS_PREFIX}{pid}-{label}-{index}")).unwrap();
            let port = format!("p{index}");
            ip(&["-n", hub.name(), "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", netns.name()]);
            ip(&["-n", hub.name(), "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", netns.name(), "addr", "add", &format!("{}/24", address(index)), "dev", "eth0"]);
            ip(&["-n", netns.name(), "link", "set", "eth0", "up"]);
            ip(&["-n", netns.name(), "link", "set", "lo", "up"]);
            netns
        })
        .collect();
    Bridged { hub, nodes }
}
