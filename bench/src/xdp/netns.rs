//! Network namespaces and the veth pair the scenario runs on, and their cleanup.

use super::*;

/// Prefix of every namespace this module creates: `runnel-xdp-<pid>-<n>-tx|rx`.
pub const NETNS_PREFIX: &str = "runnel-xdp-";
/// The sending end of the pair (in the sender namespace).
pub const SENDER_INTERFACE: &str = "veth-a";
/// The receiving end, where the node listens and the filter attaches.
pub const RECEIVER_INTERFACE: &str = "veth-b";
/// Packets the sending veth's qdisc holds while the receiving side is busy.
const SENDER_QDISC_PACKETS: u32 = 4096;

/// Names of namespaces created and not yet deleted, for the panic hook.
static LIVE_NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT_PAIR: AtomicUsize = AtomicUsize::new(0);

/// Runs `tool` (iproute2's `ip` and `tc`, `ethtool`) and returns its standard output.
fn tool_output(tool: &str, args: &[&str]) -> Result<Vec<u8>, BenchError> {
    let package = if tool == "ethtool" { "ethtool" } else { "iproute2" };
    let path = find_executable(tool, None).map_err(|_| BenchError::new(format!("`{tool}` not found: apt-get install -y {package}")))?;
    let output = std::process::Command::new(&path)
        .args(args)
        .output()
        .map_err(|e| BenchError::new(format!("cannot run {}: {e}", path.display())))?;
    if !output.status.success() {
        return Err(BenchError::new(format!(
            "`{tool} {}` failed ({}): {} (needs root)",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), BenchError> {
    tool_output(tool, args).map(|_| ())
}

/// Deletes every namespace this process created and has not deleted yet. Called by the
/// panic hook; tests may call it from a watchdog before exiting.
pub fn remove_live_namespaces() {
    // try_lock: the panicking thread may hold the lock.
    let names = match LIVE_NAMESPACES.try_lock() {
        Ok(mut names) => std::mem::take(&mut *names),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => std::mem::take(&mut *poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for name in names {
        let _ = run_tool("ip", &["netns", "del", &name]);
    }
}

/// With `panic = "abort"` (the release profile) no `Drop` runs on a panic; delete the
/// namespaces from the panic hook instead. With unwinding, the guards' `Drop` does it.
fn install_abort_cleanup() {
    #[cfg(panic = "abort")]
    {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                remove_live_namespaces();
            }));
        });
    }
}

/// Deletes namespaces with our prefix whose creating process is gone (killed before its
/// guards dropped).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_tool("ip", &["netns", "del", &name]);
        }
    }
}

/// Moves the calling thread into the namespace behind `file`.
fn enter_namespace(file: &File, name: &str) -> Result<(), BenchError> {
    // SAFETY: setns on a namespace fd we own; it changes only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(BenchError::new(format!("cannot enter network namespace {name}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// A named network namespace (`ip netns add`), deleted when dropped.
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, BenchError> {
        install_abort_cleanup();
        run_tool("ip", &["netns", "add", name])?;
        LIVE_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
        let path = format!("/run/netns/{name}");
        match File::open(&path) {
            Ok(file) => Ok(Netns { name: name.to_string(), file }),
            Err(e) => {
                let _ = run_tool("ip", &["netns", "del", name]);
                Err(BenchError::new(format!("cannot open {path}: {e}")))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` on a new thread inside this namespace and waits for it. Sockets created
    /// there stay in this namespace wherever they are used later.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, BenchError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(scope, || {
                    enter_namespace(&self.file, &self.name)?;
                    Ok(work())
                })
                .map_err(|e| BenchError::new(format!("cannot start a thread: {e}")))?;
            thread.join().map_err(|_| BenchError::new(format!("a thread in namespace {} panicked", self.name)))?
        })
    }

    /// Starts `work` on a named thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: &str,
        work: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
    ) -> Result<JoinHandle<Result<T, BenchError>>, BenchError> {
        let file = self.file.try_clone().map_err(|e| BenchError::new(format!("cannot duplicate a namespace fd: {e}")))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                enter_namespace(&file, &name)?;
                work()
            })
            .map_err(|e| BenchError::new(format!("cannot start thread {thread_name}: {e}")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_tool("ip", &["netns", "del", &self.name]);
        LIVE_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).retain(|name| *name != self.name);
    }
}

/// Drop counters of both veth ends (`/proc/net/dev` inside each namespace) and of the
/// sending end's qdisc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethDrops {
    pub sender_tx: u64,
    pub sender_rx: u64,
    pub receiver_rx: u64,
    pub receiver_tx: u64,
    /// Packets `veth-a`'s qdisc refused because it was full: the flood's are refused sends
    /// (not counted as sent), the clients' are lost datagrams (their sockets do not set
    /// `IP_RECVERR`, so the kernel drops them silently).
    pub sender_qdisc: u64,
}

impl VethDrops {
    /// Drops of the two interfaces (not the qdisc): nonzero means a packet the kernel took
    /// from a sender vanished on the way, and no per-kind count can be trusted.
    pub fn interfaces(&self) -> u64 {
        self.sender_tx + self.sender_rx + self.receiver_rx + self.receiver_tx
    }

    pub(super) fn since(&self, earlier: &VethDrops) -> VethDrops {
        VethDrops {
            sender_tx: self.sender_tx - earlier.sender_tx,
            sender_rx: self.sender_rx - earlier.sender_rx,
            receiver_rx: self.receiver_rx - earlier.receiver_rx,
            receiver_tx: self.receiver_tx - earlier.receiver_tx,
            sender_qdisc: self.sender_qdisc - earlier.sender_qdisc,
        }
    }
}

/// Packets the root qdisc of `interface` in namespace `netns` dropped (`tc -s -j`).
fn qdisc_drops(netns: &str, interface: &str) -> Result<u64, BenchError> {
    let output = tool_output("tc", &["-n", netns, "-s", "-j", "qdisc", "show", "dev", interface])?;
    let qdiscs: Value =
        serde_json::from_slice(&output).map_err(|e| BenchError::new(format!("cannot parse `tc -s -j qdisc` output: {e}")))?;
    Ok(qdiscs.as_array().into_iter().flatten().filter(|q| q["root"] == json!(true)).filter_map(|q| q["drops"].as_u64()).sum())
}

/// (rx drops, tx drops) of `interface` in the calling thread's namespace.
fn interface_drops(interface: &str) -> Result<(u64, u64), BenchError> {
    let table =
        std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| BenchError::new(format!("cannot read /proc/net/dev: {e}")))?;
    for line in table.lines() {
        let Some((name, values)) = line.split_once(':') else { continue };
        if name.trim() == interface {
            let fields: Vec<u64> = values.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            if fields.len() >= 12 {
                return Ok((fields[3], fields[11]));
            }
        }
    }
    Err(BenchError::new(format!("no interface {interface} in /proc/net/dev")))
}

/// UDP receive-buffer errors (datagrams a full socket buffer refused) in the calling thread's
/// namespace.
pub(super) fn udp_receive_buffer_errors() -> Result<u64, BenchError> {
    let snmp =
        std::fs::read_to_string("/proc/thread-self/net/snmp").map_err(|e| BenchError::new(format!("cannot read /proc/net/snmp: {e}")))?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return Ok(0) };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0))
}

/// Two namespaces joined by a veth pair: `veth-a` = 10.77.x.1/24 in `sender`, `veth-b` =
/// 10.77.x.2/24 in `receiver`. Deleted (namespaces, and with them the pair) when dropped.
pub struct VethPair {
    pub sender: Netns,
    pub receiver: Netns,
    /// The x in 10.77.x.0/24.
    pub subnet: u8,
}

impl VethPair {
    pub fn create() -> Result<VethPair, BenchError> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let index = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let subnet = (1 + (pid as usize + index) % 254) as u8;
        let sender = Netns::create(&format!("{NETNS_PREFIX}{pid}-{index}-tx"))?;
        let receiver = Netns::create(&format!("{NETNS_PREFIX}{pid}-{index}-rx"))?;
        for netns in [&sender, &receiver] {
            // Best effort: without IPv6 the pair carries no router solicitations or MLD
            // reports, only what the scenario sends (and ARP).
            netns.run(|| {
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
            })?;
        }
        let (tx, rx) = (sender.name().to_string(), receiver.name().to_string());
        let sender_address = format!("10.77.{subnet}.1/24");
        let receiver_address = format!("10.77.{subnet}.2/24");
        let qdisc_limit = SENDER_QDISC_PACKETS.to_string();
        // One queue each way, as a single-queue NIC: with veth's default of one queue per CPU,
        // a flow's packets were at times judged on two CPUs at once under backpressure, and a
        // few fresh datagrams came out `replayed` (see bench/README.md), which would make the
        // per-kind accounting inexact for reasons outside the node.
        let one_queue = ["numtxqueues", "1", "numrxqueues", "1"];
        let mut add = vec!["-n", &tx, "link", "add", SENDER_INTERFACE];
        add.extend(one_queue);
        add.extend(["type", "veth", "peer", "name", RECEIVER_INTERFACE]);
        add.extend(one_queue);
        add.extend(["netns", &rx]);
        run_tool("ip", &add)?;
        run_tool("ip", &["-n", &tx, "addr", "add", &sender_address, "dev", SENDER_INTERFACE])?;
        run_tool("ip", &["-n", &rx, "addr", "add", &receiver_address, "dev", RECEIVER_INTERFACE])?;
        run_tool("ip", &["-n", &tx, "link", "set", SENDER_INTERFACE, "up"])?;
        run_tool("ip", &["-n", &rx, "link", "set", RECEIVER_INTERFACE, "up"])?;
        // A real qdisc instead of veth's noqueue: with native XDP on the peer, a full ring then
        // holds packets back instead of dropping them (see the module doc, "Accounting").
        run_tool("tc", &["-n", &tx, "qdisc", "replace", "dev", SENDER_INTERFACE, "root", "pfifo", "limit", &qdisc_limit])?;
        // The same path with the filter on and off (module doc, "Two modes, one path"): the
        // sender segments GSO sends into one packet per datagram, as a NIC puts them on the
        // wire (attaching XDP to veth-b turns this off on veth-a anyway), and veth-b receives
        // with NAPI and GRO, as a NIC driver does (with XDP it does so anyway).
        sender
            .run(|| run_tool("ethtool", &["-K", SENDER_INTERFACE, "tso", "off", "tx-udp-segmentation", "off", "tx-gso-list", "off"]))??;
        receiver.run(|| run_tool("ethtool", &["-K", RECEIVER_INTERFACE, "gro", "on"]))??;
        Ok(VethPair { sender, receiver, subnet })
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    pub fn receiver_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2)
    }

    pub fn drops(&self) -> Result<VethDrops, BenchError> {
        let (sender_rx, sender_tx) = self.sender.run(|| interface_drops(SENDER_INTERFACE))??;
        let (receiver_rx, receiver_tx) = self.receiver.run(|| interface_drops(RECEIVER_INTERFACE))??;
        let sender_qdisc = qdisc_drops(self.sender.name(), SENDER_INTERFACE)?;
        Ok(VethDrops { sender_tx, sender_rx, receiver_rx, receiver_tx, sender_qdisc })
    }
}
