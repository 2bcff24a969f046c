//! Commands reach the XDP maps: a real node with the XDP filter attached to a veth between
//! two network namespaces this test creates (and deletes). Needs root.

use runnel_core::counters::Counter;
use runnel_core::filter::{FilterUpdate, Verdict};
use runnel_node::command::Command;
use runnel_node::config::{LinkConfig, LinkRole, NodeConfig};
use runnel_node::node::{FilterMode, Node, NodeHandle};
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{self, HeaderFields, Kind, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH};
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);
const SENDER_ADDRESS: &str = "10.213.7.1";
const NODE_ADDRESS: &str = "10.213.7.2";
const NODE_INTERFACE: &str = "veth-cmd-b";
const NODE_PORT: u16 = 7000;

fn ip(args: &[&str]) {
    let output = std::process::Command::new("ip").args(args).output().expect("iproute2's `ip` (apt-get install -y iproute2)");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// Two namespaces joined by a veth pair, deleted (with the pair) when dropped.
struct VethPair {
    sender: String,
    node: String,
}

impl VethPair {
    fn create() -> VethPair {
        let prefix = format!("runnel-cmd-{}", std::process::id());
        let pair = VethPair { sender: format!("{prefix}-a"), node: format!("{prefix}-b") };
        ip(&["netns", "add", &pair.sender]);
        ip(&["netns", "add", &pair.node]);
        ip(&["link", "add", "veth-cmd-a", "netns", &pair.sender, "type", "veth", "peer", "name", NODE_INTERFACE, "netns", &pair.node]);
        ip(&["-n", &pair.sender, "addr", "add", &format!("{SENDER_ADDRESS}/24"), "dev", "veth-cmd-a"]);
        ip(&["-n", &pair.node, "addr", "add", &format!("{NODE_ADDRESS}/24"), "dev", NODE_INTERFACE]);
        ip(&["-n", &pair.sender, "link", "set", "veth-cmd-a", "up"]);
        ip(&["-n", &pair.node, "link", "set", NODE_INTERFACE, "up"]);
        pair
    }

    /// Runs `work` on a thread inside namespace `name`; sockets and threads it creates stay
    /// in that namespace.
    fn run<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(format!("/run/netns/{name}")).expect("the namespace exists");
                    // SAFETY: setns on a namespace fd we hold open; it moves only this thread.
                    assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns into {name}");
                    work()
                })
                .join()
                .expect("the namespace thread did not panic")
        })
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for name in [&self.sender, &self.node] {
            let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn link(id: u32, role: LinkRole, peer: Option<SocketAddr>) -> LinkConfig {
    LinkConfig {
        id,
        peer_link_id: None,
        key: LinkKey([id as u8; 32]),
        role,
        peer,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    }
}

/// A Data datagram without records: the filter judges it by its header alone.
fn data(link: &LinkConfig, link_seq: u64, part: StreamPartKey, publisher: Option<[u8; 20]>) -> Vec<u8> {
    let mut fields = HeaderFields { total_length: HEADER_LENGTH as u16, ..HeaderFields::new(Kind::Data, link.id, link_seq, part.0) };
    if let Some(publisher) = publisher {
        fields.flags = FLAG_SINGLE_PUBLISHER;
        fields.publisher = publisher;
    }
    let mut bytes = vec![0u8; HEADER_LENGTH];
    wire::write_header(&fields, &link.key, &mut bytes);
    bytes
}

struct Probe<'a> {
    node: &'a NodeHandle,
    sender: UdpSocket,
    link_seq: u64,
}

impl Probe<'_> {
    /// Sends one datagram of `link` and waits until the XDP filter has counted it as `verdict`.
    fn expect(&mut self, verdict: Verdict, link: &LinkConfig, part: StreamPartKey, publisher: Option<[u8; 20]>) {
        let count = |node: &NodeHandle| node.xdp_verdicts().expect("XDP is on")[verdict as usize];
        let before = count(self.node);
        self.link_seq += 1;
        let destination = SocketAddr::new(NODE_ADDRESS.parse().unwrap(), NODE_PORT);
        self.sender.send_to(&data(link, self.link_seq, part, publisher), destination).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while count(self.node) == before {
            assert!(Instant::now() < deadline, "no {verdict:?} verdict for link {}'s datagram {}", link.id, self.link_seq);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// Goal: each command changes the XDP maps before its response: a client link is unknown to
// the kernel until AddLink and again after RemoveLink; a restricted stream part drops a
// publisher until Permit; a neighbor's data for a stream part is not joined until Join and
// again after Leave. Every drop happens in XDP: the shard's own filter sees none of them.
#[test]
fn commands_change_the_xdp_maps() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test attaches XDP and creates network namespaces: run it as root");
    let pair = VethPair::create();
    let config = NodeConfig::parse(&format!(
        "[node]\nlisten = \"{NODE_ADDRESS}:{NODE_PORT}\"\nshards = 1\n[xdp]\nmode = \"native\"\ninterface = \"{NODE_INTERFACE}\"\n"
    ))
    .unwrap();
    let node = VethPair::run(&pair.node, || Node::start(config)).unwrap_or_else(|error| panic!("the node did not start: {error}"));
    assert_eq!(node.filter_mode(), &FilterMode::Xdp { interface: NODE_INTERFACE.into(), native: true });
    let sender = VethPair::run(&pair.sender, || UdpSocket::bind((SENDER_ADDRESS, 0))).unwrap();
    let client = link(50, LinkRole::Client, None);
    let neighbor = link(51, LinkRole::Neighbor, Some(sender.local_addr().unwrap()));
    let mut probe = Probe { node: &node, sender, link_seq: 0 };
    let (part, publisher) = (StreamPartKey([0x61; 32]), [0x62; 20]);

    probe.expect(Verdict::UnknownLink, &client, part, None);
    node.execute(Command::AddLink(client.clone()), TIMEOUT).unwrap();
    probe.expect(Verdict::Pass, &client, part, None);

    node.execute(Command::Policy(FilterUpdate::SetRestricted { part, restricted: true }), TIMEOUT).unwrap();
    probe.expect(Verdict::NotPermitted, &client, part, Some(publisher));
    node.execute(Command::Policy(FilterUpdate::Permit { part, publisher, until_ns: u64::MAX }), TIMEOUT).unwrap();
    probe.expect(Verdict::Pass, &client, part, Some(publisher));

    let other_part = StreamPartKey([0x63; 32]);
    node.execute(Command::AddLink(neighbor.clone()), TIMEOUT).unwrap();
    probe.expect(Verdict::NotJoined, &neighbor, other_part, None);
    node.execute(Command::Join { part: other_part }, TIMEOUT).unwrap();
    probe.expect(Verdict::Pass, &neighbor, other_part, None);
    node.execute(Command::Leave { part: other_part }, TIMEOUT).unwrap();
    probe.expect(Verdict::NotJoined, &neighbor, other_part, None);

    node.execute(Command::RemoveLink { link_id: client.id }, TIMEOUT).unwrap();
    probe.expect(Verdict::UnknownLink, &client, part, None);

    let counters = &node.counters()[0];
    assert_eq!(counters.get(Counter::DatagramsReceived), 3, "only the three passed datagrams reach the shard");
    for dropped in [Counter::DatagramsUnknownLink, Counter::DatagramsNotJoined, Counter::DatagramsNotPermitted] {
        assert_eq!(counters.get(dropped), 0, "{dropped:?}: XDP dropped these, not the shard");
    }
    node.stop().unwrap();
}
