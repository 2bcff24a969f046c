//! # runnel-ebpf: the XDP early-rejection filter
//!
//! A public relay is a target: anyone can aim datagrams at its ports, and every datagram that
//! reaches the relay claiming a permitted publisher costs tens of microseconds of ECDSA. This
//! crate puts a filter in front of the relay, in the kernel: an XDP program
//! (`src/runnel_filter.c`, C built by clang in `build.rs`) that judges each UDP packet to the
//! node's ports from its 88-byte datagram header alone, before the kernel allocates an skb,
//! and drops what does not deserve userspace work. [`XdpFilter`] loads it with aya, attaches
//! it, and feeds its maps. The rules, their order and the map layouts are
//! `docs/xdp-filter.md`; the userspace filter in the dataplane applies the same rules, so the
//! two agree on every input and the node behaves the same with XDP on or off.
//!
//! ```no_run
//! use runnel_ebpf::{AttachMode, LinkEntry, Verdict, XdpFilter, ROLE_NEIGHBOR};
//!
//! let mut filter = XdpFilter::load()?; // verified, not yet attached
//! filter.add_port(7000)?;
//! filter.set_link(1, &LinkEntry::new([7; 32], ROLE_NEIGHBOR, 100_000, 64))?;
//! filter.join([9; 32])?;
//! filter.attach("eth0", AttachMode::Native)?;
//! let counts = filter.verdict_counts()?;
//! println!("dropped as bad tag: {}", counts[Verdict::BadTag as usize]);
//! # Ok::<(), runnel_ebpf::XdpError>(())
//! ```
//!
//! ## How it works
//!
//! The program parses Ethernet (one optional 802.1Q tag), IPv4 or IPv6 and UDP, and looks the
//! destination port up in `ports`; anything else is [`Verdict::NotRunnel`] and passes
//! untouched. For the node's traffic it checks, in order, and stops at the first failure: the
//! fixed header fields, the link (`links`), the link tag (SipHash-2-4 over header bytes 0..80,
//! ten words: a fixed loop), the link quarantine, the publisher quarantine, the replay window
//! of (link, source address, source port), the joined stream parts, publish permission for
//! restricted stream parts, and the link's GCRA rate limit. Each packet's [`Verdict`] is
//! counted in a per-CPU array, read with [`XdpFilter::verdict_counts`].
//!
//! The maps belong to this struct: only the node's policy thread writes them, through the
//! methods here. Every expiry is on `CLOCK_MONOTONIC` ([`monotonic_ns`]), the clock of
//! `bpf_ktime_get_ns`; `u64::MAX` means never. [`XdpFilter::test_run`] runs the real program
//! on a crafted frame through `BPF_PROG_TEST_RUN`, which is how the tests and benchmarks
//! exercise it without a network ([`packet`] builds the frames).
//!
//! ## Limits
//!
//! - The replay window's map is an LRU (it is written on the fast path and must stay
//!   bounded), and the kernel refuses `bpf_spin_lock` in LRU values, so the program guards
//!   each window with its own compare-and-exchange try-lock. A window whose lock stays busy
//!   for 64 attempts refuses the datagram as replayed (it never happens without contention
//!   on one flow; NAK repair recovers the datagram). The GCRA has no lock: CPUs racing on one
//!   link may admit a datagram or two beyond the burst.
//! - Only a frame's linear part is visible (the program is not `xdp.frags`). IPv4 non-first
//!   fragments and IPv6 packets with extension headers pass unjudged; the userspace filter
//!   sees them after reassembly.
//! - With the filter attached, every GRO segment costs a program run (DESIGN.md §6 measured
//!   a GSO/GRO stream falling from 5.7 to 1.1 GB/s on veth): measure with the filter on and off.
//! - One interface per [`XdpFilter`]; load one per interface.
//!
//! ## Prerequisites
//!
//! - **Linux 5.12 or later.** The binding feature is BPF atomics with fetch,
//!   compare-and-exchange and exchange (5.12), used by the replay lock and the GCRA; the
//!   rest is older (32-bit BPF ALU 5.1, bounded loops 5.3, LRU hash 4.10, XDP 4.8,
//!   `BPF_PROG_TEST_RUN` for XDP 4.12, `bpf_link` XDP attachment 5.9, else netlink).
//!   Check with `uname -r`.
//! - **Privileges:** root, or `CAP_BPF` + `CAP_NET_ADMIN` (+ `CAP_PERFMON` on some
//!   kernels). Before 5.11 BPF memory counts against `ulimit -l`.
//! - **Build:** clang and libbpf headers: `apt-get install -y clang libbpf-dev`
//!   (`scripts/setup.sh` does it).
//! - **Native mode** needs driver support (veth, most 10G+ NICs: check with
//!   `ethtool -i <if>` and the driver's docs); everything else takes generic mode.
//!
//! Without the privileges or the kernel, [`XdpFilter::load`] returns an [`XdpError`] that
//! says so; the node logs it once and runs the same checks in userspace.

mod error;
mod layout;
pub mod packet;

pub use error::XdpError;
pub use runnel_proto::clock::monotonic_ns;
pub use runnel_proto::rate::gcra_parameters;
pub use runnel_proto::verdict::{Verdict, VERDICT_COUNT};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::Ebpf;
use layout::{LinkValue, PermissionKey, ReplayKey, ReplayWindowValue};

/// A link to another node: its stream parts' Data must be for joined parts.
pub const ROLE_NEIGHBOR: u32 = 0;
/// A link to a client: its Data may be for a stream part the node has not joined yet
/// (publishing there makes the node join it).
pub const ROLE_CLIENT: u32 = 1;

/// `XDP_DROP`, as [`TestRunOutcome::action`] reports it.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`, as [`TestRunOutcome::action`] reports it.
pub const XDP_PASS: u32 = 2;

/// Capacity of the `ports` map.
pub const PORTS_MAX: u32 = 256;
/// Capacity of the `links`, `replay`, `quarantined_links`, `quarantined_publishers`,
/// `joined` and `restricted` maps.
pub const ENTRIES_MAX: u32 = 65_536;
/// Capacity of the `permissions` map.
pub const PERMISSIONS_MAX: u32 = 262_144;

/// The compiled program, embedded at build time (8-byte aligned, as the ELF parser needs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/runnel_filter.o"));
const PROGRAM_NAME: &str = "runnel_filter";

/// What the filter knows about one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkEntry {
    /// The link's 32-byte key; its first 16 bytes key the link tag (docs/protocol.md §4).
    pub key: [u8; 32],
    /// [`ROLE_NEIGHBOR`] or [`ROLE_CLIENT`].
    pub role: u32,
    /// GCRA emission interval `T`: ns per datagram (`1e9 / rate_datagrams_per_s`); 0 = no
    /// rate limit.
    pub emission_interval_ns: u64,
    /// GCRA burst tolerance `tau = (burst_datagrams - 1) × T`.
    pub burst_tolerance_ns: u64,
}

impl LinkEntry {
    /// An entry that admits `burst_datagrams` back to back, then `rate_datagrams_per_s`
    /// (0 = no rate limit; a burst of 0 counts as 1).
    pub fn new(key: [u8; 32], role: u32, rate_datagrams_per_s: u64, burst_datagrams: u64) -> LinkEntry {
        let (emission_interval_ns, burst_tolerance_ns) = gcra_parameters(rate_datagrams_per_s, burst_datagrams);
        LinkEntry { key, role, emission_interval_ns, burst_tolerance_ns }
    }

    fn to_map_value(self) -> LinkValue {
        let word = |range: std::ops::Range<usize>| u64::from_le_bytes(self.key[range].try_into().expect("8-byte slice"));
        LinkValue {
            key0: word(0..8),
            key1: word(8..16),
            emission_interval_ns: self.emission_interval_ns,
            burst_tolerance_ns: self.burst_tolerance_ns,
            tat_ns: 0,
            role: self.role,
            pad: 0,
        }
    }
}

/// Where the filter runs: in the driver, or in the kernel's network stack after the skb is
/// built (slower, works on every interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP: before the skb exists. Needs driver support.
    Native,
    /// Generic (skb) XDP: after the skb exists; any interface.
    Generic,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// One run of the program through `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct TestRunOutcome {
    /// The XDP action of the last run: [`XDP_DROP`] or [`XDP_PASS`].
    pub action: u32,
    /// Mean time per run as the kernel measured it (whole nanoseconds: the kernel divides
    /// before it reports).
    pub duration_ns_per_run: f64,
}

struct Attachment {
    interface: String,
    mode: AttachMode,
    link: XdpLinkId,
}

/// The loaded XDP program, its typed maps, and its attachment (at most one interface).
///
/// Dropping it detaches the program and frees the maps. `Send`: the node's policy thread
/// owns it. Methods that change a map take `&mut self`: one writer, as docs/xdp-filter.md
/// "Who writes the maps" requires.
pub struct XdpFilter {
    // Field order is drop order: the maps' fds close after the program (and its attachment)
    // is gone, though the kernel keeps maps alive for a loaded program either way.
    ebpf: Ebpf,
    attachment: Option<Attachment>,
    ports: HashMap<MapData, u16, u8>,
    links: HashMap<MapData, u32, LinkValue>,
    replay: HashMap<MapData, ReplayKey, ReplayWindowValue>,
    quarantined_links: HashMap<MapData, u32, u64>,
    quarantined_publishers: HashMap<MapData, [u8; 20], u64>,
    joined: HashMap<MapData, [u8; 32], u8>,
    restricted: HashMap<MapData, [u8; 32], u8>,
    permissions: HashMap<MapData, PermissionKey, u64>,
    verdicts: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for XdpFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpFilter").field("attached", &self.attached()).finish_non_exhaustive()
    }
}

impl XdpFilter {
    /// Loads the program and creates its maps (all empty: no ports, so every packet is
    /// [`Verdict::NotRunnel`]), and has the kernel verify it. Does not attach.
    pub fn load() -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|error| load_error("loading the XDP filter", &error))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .expect("runnel_filter.o defines the runnel_filter program")
            .try_into()
            .expect("runnel_filter is an XDP program");
        program.load().map_err(|error| load_error("verifying the XDP filter", &error))?;

        let ports = take_map(&mut ebpf, "ports")?;
        let links = take_map(&mut ebpf, "links")?;
        let replay = take_map(&mut ebpf, "replay")?;
        let quarantined_links = take_map(&mut ebpf, "quarantined_links")?;
        let quarantined_publishers = take_map(&mut ebpf, "quarantined_publishers")?;
        let joined = take_map(&mut ebpf, "joined")?;
        let restricted = take_map(&mut ebpf, "restricted")?;
        let permissions = take_map(&mut ebpf, "permissions")?;
        let verdicts = take_map(&mut ebpf, "verdicts")?;
        Ok(XdpFilter {
            ebpf,
            attachment: None,
            ports,
            links,
            replay,
            quarantined_links,
            quarantined_publishers,
            joined,
            restricted,
            permissions,
            verdicts,
        })
    }

    /// Attaches the program to `interface`. One interface per filter: a second call without
    /// [`detach`](Self::detach) fails with [`XdpError::AlreadyAttached`].
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), XdpError> {
        if let Some(attachment) = &self.attachment {
            return Err(XdpError::AlreadyAttached { interface: attachment.interface.clone() });
        }
        // aya turns the name into a C string with unwrap: refuse what would panic there.
        if interface.is_empty() || interface.contains('\0') {
            return Err(XdpError::UnknownInterface { interface: interface.to_owned() });
        }
        let link = self.program_mut().attach(interface, mode.xdp_mode()).map_err(|error| attach_error(interface, mode, error))?;
        self.attachment = Some(Attachment { interface: interface.to_owned(), mode, link });
        Ok(())
    }

    /// Detaches the program if it is attached; the maps and counters stay.
    pub fn detach(&mut self) -> Result<(), XdpError> {
        let Some(attachment) = self.attachment.take() else { return Ok(()) };
        self.program_mut().detach(attachment.link).map_err(|error| XdpError::Attach {
            interface: attachment.interface.clone(),
            mode: attachment.mode,
            message: format!("detaching failed: {}", error::describe(&error)),
        })
    }

    /// The interface and mode the program is attached with, if it is.
    pub fn attached(&self) -> Option<(String, AttachMode)> {
        self.attachment.as_ref().map(|attachment| (attachment.interface.clone(), attachment.mode))
    }

    /// Makes UDP port `port` one of the node's: packets to it are judged.
    pub fn add_port(&mut self, port: u16) -> Result<(), XdpError> {
        insert("ports", PORTS_MAX, &mut self.ports, port, 1)
    }

    /// Stops judging packets to `port` (they pass as [`Verdict::NotRunnel`]). Fine if absent.
    pub fn remove_port(&mut self, port: u16) -> Result<(), XdpError> {
        remove("ports", &mut self.ports, &port)
    }

    /// Adds or replaces link `link_id`. Resets its rate limiter (the link starts with a full
    /// burst); keeps its replay windows.
    pub fn set_link(&mut self, link_id: u32, entry: &LinkEntry) -> Result<(), XdpError> {
        if entry.role != ROLE_NEIGHBOR && entry.role != ROLE_CLIENT {
            return Err(XdpError::InvalidRole { role: entry.role });
        }
        insert("links", ENTRIES_MAX, &mut self.links, link_id, entry.to_map_value())
    }

    /// Removes link `link_id` and forgets its replay windows, so a link later set again under
    /// the same id (a new key, sequences from 0) starts clean. Fine if absent. Costs a walk
    /// over the replay map (at most [`ENTRIES_MAX`] keys): a control-path operation.
    pub fn remove_link(&mut self, link_id: u32) -> Result<(), XdpError> {
        remove("links", &mut self.links, &link_id)?;
        let mut stale = Vec::new();
        for key in self.replay.keys() {
            let key = key.map_err(|error| map_error("replay", "iterate", &error))?;
            if key.link_id == link_id {
                stale.push(key);
            }
        }
        for key in &stale {
            remove("replay", &mut self.replay, key)?;
        }
        Ok(())
    }

    /// Quarantines link `link_id` until `until_ns` (`CLOCK_MONOTONIC`; `u64::MAX` = until
    /// released).
    pub fn quarantine_link(&mut self, link_id: u32, until_ns: u64) -> Result<(), XdpError> {
        insert("quarantined_links", ENTRIES_MAX, &mut self.quarantined_links, link_id, until_ns)
    }

    /// Ends link `link_id`'s quarantine. Fine if it had none.
    pub fn release_link(&mut self, link_id: u32) -> Result<(), XdpError> {
        remove("quarantined_links", &mut self.quarantined_links, &link_id)
    }

    /// Quarantines `publisher` until `until_ns`: single-publisher datagrams naming it are
    /// dropped.
    pub fn quarantine_publisher(&mut self, publisher: [u8; 20], until_ns: u64) -> Result<(), XdpError> {
        insert("quarantined_publishers", ENTRIES_MAX, &mut self.quarantined_publishers, publisher, until_ns)
    }

    /// Ends `publisher`'s quarantine. Fine if it had none.
    pub fn release_publisher(&mut self, publisher: [u8; 20]) -> Result<(), XdpError> {
        remove("quarantined_publishers", &mut self.quarantined_publishers, &publisher)
    }

    /// Marks stream part `part` (its 32-byte key) as joined.
    pub fn join(&mut self, part: [u8; 32]) -> Result<(), XdpError> {
        insert("joined", ENTRIES_MAX, &mut self.joined, part, 1)
    }

    /// Unmarks stream part `part` as joined. Fine if absent.
    pub fn leave(&mut self, part: [u8; 32]) -> Result<(), XdpError> {
        remove("joined", &mut self.joined, &part)
    }

    /// Makes publishing to `part` need a permission ([`permit`](Self::permit)), or not.
    pub fn set_restricted(&mut self, part: [u8; 32], restricted: bool) -> Result<(), XdpError> {
        if restricted {
            insert("restricted", ENTRIES_MAX, &mut self.restricted, part, 1)
        } else {
            remove("restricted", &mut self.restricted, &part)
        }
    }

    /// Lets `publisher` publish to `part` until `until_ns` (exclusive).
    pub fn permit(&mut self, part: [u8; 32], publisher: [u8; 20], until_ns: u64) -> Result<(), XdpError> {
        insert("permissions", PERMISSIONS_MAX, &mut self.permissions, PermissionKey { part, publisher }, until_ns)
    }

    /// Withdraws `publisher`'s permission for `part`. Fine if it had none.
    pub fn revoke(&mut self, part: [u8; 32], publisher: [u8; 20]) -> Result<(), XdpError> {
        remove("permissions", &mut self.permissions, &PermissionKey { part, publisher })
    }

    /// Packets judged so far per verdict (index = [`Verdict`] id), summed over CPUs.
    pub fn verdict_counts(&self) -> Result<[u64; VERDICT_COUNT], XdpError> {
        let mut counts = [0u64; VERDICT_COUNT];
        for (index, count) in counts.iter_mut().enumerate() {
            let per_cpu = self.verdicts.get(&(index as u32), 0).map_err(|error| map_error("verdicts", "read", &error))?;
            *count = per_cpu.iter().fold(0u64, |sum, value| sum.wrapping_add(*value));
        }
        Ok(counts)
    }

    /// Runs the program `repeat` times (0 counts as 1) on `packet`, a whole Ethernet frame,
    /// through `BPF_PROG_TEST_RUN`, against the live maps: verdicts are counted and replay
    /// windows and rate limiters advance as for real traffic.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome, XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .expect("runnel_filter.o defines the runnel_filter program")
            .try_into()
            .expect("runnel_filter is an XDP program");
        let options = TestRunOptions { data_in: Some(packet), repeat: repeat.max(1), ..TestRunOptions::default() };
        let result = program.test_run(options).map_err(|error| match error::os_error(&error) {
            Some(libc::EPERM) => {
                XdpError::PermissionDenied { operation: "BPF_PROG_TEST_RUN".into(), source: std::io::Error::from_raw_os_error(libc::EPERM) }
            }
            _ => XdpError::TestRun { message: format!("{} (packet of {} bytes)", error::describe(&error), packet.len()) },
        })?;
        Ok(TestRunOutcome { action: result.return_value, duration_ns_per_run: result.duration.as_nanos() as f64 })
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .expect("runnel_filter.o defines the runnel_filter program")
            .try_into()
            .expect("runnel_filter is an XDP program")
    }
}

// The dataplane's policy thread owns the filter; a non-Send field would be a compile error here.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<XdpFilter>();
};

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, XdpError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).unwrap_or_else(|| panic!("runnel_filter.o defines the `{name}` map"));
    // A size mismatch between layout.rs and runnel_filter.c lands here.
    M::try_from(map).map_err(|error| XdpError::Load { message: format!("map `{name}`: {}", error::describe(&error)) })
}

fn insert<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    max_entries: u32,
    map: &mut HashMap<MapData, K, V>,
    key: K,
    value: V,
) -> Result<(), XdpError> {
    map.insert(key, value, 0).map_err(|error| match error::os_error(&error) {
        Some(libc::E2BIG) => XdpError::MapFull { map: name, max_entries },
        _ => map_error(name, "insert", &error),
    })
}

fn remove<K: aya::Pod, V: aya::Pod>(name: &'static str, map: &mut HashMap<MapData, K, V>, key: &K) -> Result<(), XdpError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(error) if error::os_error(&error) == Some(libc::ENOENT) => Ok(()),
        Err(error) => Err(map_error(name, "remove", &error)),
    }
}

fn map_error(name: &'static str, operation: &'static str, error: &MapError) -> XdpError {
    match error::os_error(error) {
        Some(libc::EPERM) => XdpError::PermissionDenied {
            operation: format!("{operation} on BPF map `{name}`"),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        },
        _ => XdpError::Map { map: name, operation, message: error::describe(error) },
    }
}

fn load_error(operation: &str, error: &(dyn std::error::Error + 'static)) -> XdpError {
    match error::os_error(error) {
        Some(libc::EPERM) => {
            XdpError::PermissionDenied { operation: operation.to_owned(), source: std::io::Error::from_raw_os_error(libc::EPERM) }
        }
        _ => XdpError::Load { message: format!("{operation}: {}", error::describe(error)) },
    }
}

fn attach_error(interface: &str, mode: AttachMode, error: ProgramError) -> XdpError {
    if let ProgramError::UnknownInterface { .. } = error {
        return XdpError::UnknownInterface { interface: interface.to_owned() };
    }
    let interface = interface.to_owned();
    match error::os_error(&error) {
        Some(libc::EPERM) => XdpError::PermissionDenied {
            operation: format!("attaching the XDP filter to {interface}"),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        },
        Some(libc::EOPNOTSUPP) if mode == AttachMode::Native => XdpError::NativeUnsupported { interface },
        Some(code @ (libc::EBUSY | libc::EEXIST)) => XdpError::InterfaceBusy { interface, source: std::io::Error::from_raw_os_error(code) },
        _ => XdpError::Attach { interface, mode, message: error::describe(&error) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the link key reaches the map as the two little-endian SipHash words
    // docs/protocol.md §4 defines (k0 = bytes 0..8, k1 = bytes 8..16), and the rate
    // parameters follow the GCRA definitions (T = 1e9 / rate, tau = (burst - 1) × T).
    #[test]
    fn link_entry_to_map_value() {
        let mut key = [0u8; 32];
        for (index, byte) in key.iter_mut().enumerate() {
            *byte = index as u8;
        }
        let entry = LinkEntry::new(key, ROLE_CLIENT, 1_000, 3);
        assert_eq!(entry.emission_interval_ns, 1_000_000);
        assert_eq!(entry.burst_tolerance_ns, 2_000_000);
        let value = entry.to_map_value();
        assert_eq!(value.key0, 0x0706_0504_0302_0100);
        assert_eq!(value.key1, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(value.tat_ns, 0);
        assert_eq!(value.role, ROLE_CLIENT);

        let unlimited = LinkEntry::new(key, ROLE_NEIGHBOR, 0, 100);
        assert_eq!((unlimited.emission_interval_ns, unlimited.burst_tolerance_ns), (0, 0));
    }
}
