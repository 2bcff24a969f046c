//! The veth attack scenario: a node in one namespace, a publisher, a subscriber and a flood
//! in the other.

use super::*;

/// The node's first (and, with one shard, only) port in the receiving namespace.
pub const NODE_PORT: u16 = 7000;
const PUBLISHER_LINK_ID: u32 = 1000;
const SUBSCRIBER_LINK_ID: u32 = 1001;
const ATTACKER_LINK_ID: u32 = 1002;
/// The stream part every legitimate message goes to.
pub const STREAM_PART: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/runnel-xdp#0";
/// Payload byte 0 of readiness probes; phases use 1..=255.
const PROBE_TAG: u8 = 0;
/// How long a publisher keeps answering NAKs after its last message.
const PUBLISHER_LINGER: Duration = Duration::from_millis(300);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const SETTLE_QUIET: Duration = Duration::from_millis(500);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A counted flood that has not finished this long after the publisher did is stopped.
const FLOOD_OVERRUN_MAX: Duration = Duration::from_secs(10);
/// Frames under one root the legitimate publisher signs at most (it signs at every flush).
const LEGIT_FRAMES_PER_ROOT_MAX: usize = 64;

/// Where the node's filter runs in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterChoice {
    /// `[xdp] mode = "native"` on `veth-b` (the node does not start without it).
    XdpNative,
    /// `[xdp] mode = "off"`: the same checks in the shards.
    Off,
}

impl FilterChoice {
    pub fn name(self) -> &'static str {
        match self {
            FilterChoice::XdpNative => "xdp-native",
            FilterChoice::Off => "userspace",
        }
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], BenchError> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| BenchError::new(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes)
}

/// Legitimate traffic of one phase.
#[derive(Clone, Copy, Debug)]
pub struct LegitPlan {
    pub messages: u64,
    pub rate_per_s: u64,
    pub payload_length: usize,
}

/// One phase: legitimate traffic, optionally under a flood.
#[derive(Clone, Debug)]
pub struct PhasePlan {
    pub name: String,
    pub legit: LegitPlan,
    pub flood: Option<FloodPlan>,
}

/// (tag, sequence) of every message the subscriber received.
type Received = Arc<Mutex<Vec<(u8, u64)>>>;

/// The subscriber: a thread in the sending namespace that records what it receives.
struct SubscriberThread {
    stop: Arc<AtomicBool>,
    received: Received,
    join: Option<JoinHandle<Result<(), BenchError>>>,
}

impl SubscriberThread {
    fn start(netns: &Netns, link: ClientLinkConfig, part: StreamPartKey) -> Result<SubscriberThread, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let (thread_stop, sink) = (stop.clone(), received.clone());
        let join = netns.spawn("xdp-subscriber", move || {
            let options = ClientOptions { publisher_key: None, verify: false, ..ClientOptions::default() };
            let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("subscriber: {what}: {e}"));
            let mut client = UdpClient::connect_with(&link, options).map_err(io("connect"))?;
            client.subscribe(&part).map_err(io("subscribe"))?;
            let mut batch = Vec::new();
            while !thread_stop.load(Ordering::Relaxed) {
                client
                    .recv(Duration::from_millis(20), |delivery| {
                        if let Some(entry) = read_payload(delivery.payload) {
                            batch.push(entry);
                        }
                    })
                    .map_err(io("receive"))?;
                if !batch.is_empty() {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).append(&mut batch);
                }
            }
            Ok(())
        })?;
        Ok(SubscriberThread { stop, received, join: Some(join) })
    }

    fn count(&self, tag: u8) -> usize {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(t, _)| *t == tag).count()
    }

    fn take(&self, tag: u8) -> Vec<u64> {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let taken = received.iter().filter(|(t, _)| *t == tag).map(|(_, s)| *s).collect();
        received.retain(|(t, _)| *t != tag);
        taken
    }

    /// Fails if the thread ended (with its error).
    fn check_running(&mut self) -> Result<(), BenchError> {
        if self.join.as_ref().is_some_and(|join| join.is_finished()) {
            let join = self.join.take().expect("checked");
            return match join.join() {
                Ok(Ok(())) => Err(BenchError::new("the subscriber stopped early")),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(BenchError::new("the subscriber panicked")),
            };
        }
        Ok(())
    }
}

impl Drop for SubscriberThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn write_payload(payload: &mut [u8], tag: u8, sequence: u64) {
    payload[0] = tag;
    payload[1..9].copy_from_slice(&sequence.to_le_bytes());
}

fn read_payload(payload: &[u8]) -> Option<(u8, u64)> {
    (payload.len() >= 9).then(|| (payload[0], u64::from_le_bytes(payload[1..9].try_into().expect("8 bytes"))))
}

/// What the legitimate publisher did.
#[derive(Clone, Copy, Debug)]
struct LegitOutcome {
    published: u64,
    /// First message to last flush (without the linger).
    window: Duration,
}

/// Publishes `plan.messages` paced at `plan.rate_per_s` (a burst and a flush per 1 ms tick),
/// then lingers to answer NAKs. Runs on the calling thread.
fn publish_legit(link: &ClientLinkConfig, part: StreamPartKey, tag: u8, plan: LegitPlan) -> Result<LegitOutcome, BenchError> {
    precise_sleeps();
    let options = ClientOptions {
        publisher_key: Some(PublisherKey::generate()),
        signing: SigningMode::Batch { frames_per_root_max: LEGIT_FRAMES_PER_ROOT_MAX },
        verify: false,
        gso: true,
    };
    let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("publisher: {what}: {e}"));
    let mut client = UdpClient::connect_with(link, options).map_err(io("connect"))?;
    let mut payload = vec![0u8; plan.payload_length.max(9)];
    let pacer = Pacer::new(plan.rate_per_s);
    let started = Instant::now();
    let timestamp_ms = unix_time_ms();
    let mut published = 0u64;
    while published < plan.messages {
        let due = pacer.due().min(plan.messages);
        while published < due {
            write_payload(&mut payload, tag, published);
            client.publish(&part, &Outgoing::binary(timestamp_ms, &payload)).map_err(io("publish"))?;
            published += 1;
        }
        client.flush().map_err(io("flush"))?;
        if published < plan.messages {
            pacer.wait_for_next_tick();
        }
    }
    let window = started.elapsed();
    client.linger(PUBLISHER_LINGER).map_err(io("linger"))?;
    Ok(LegitOutcome { published, window })
}

/// CPU time (utime + stime) of this process's node shard threads (`runnel-shard*`), in ns.
pub fn shard_cpu_ns() -> Result<u64, BenchError> {
    let entries = std::fs::read_dir("/proc/self/task").map_err(|e| BenchError::new(format!("cannot list /proc/self/task: {e}")))?;
    let mut ticks = 0u64;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with("runnel-shard") {
            continue;
        }
        // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |index: usize| fields.get(index - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(14) + field(15);
    }
    Ok(ticks_to_ns(ticks))
}

/// Softirq time of the whole machine (all CPUs) from `/proc/stat`, in ns.
pub fn softirq_ns() -> Result<u64, BenchError> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| BenchError::new(format!("cannot read /proc/stat: {e}")))?;
    let line = stat.lines().find(|line| line.starts_with("cpu ")).ok_or_else(|| BenchError::new("no cpu line in /proc/stat"))?;
    // cpu user nice system idle iowait irq softirq ...
    let softirq = line.split_whitespace().nth(7).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Ok(ticks_to_ns(softirq))
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.saturating_mul(1_000_000_000 / per_s)
}

fn summed(counters: &[Counters]) -> Counters {
    let mut total = Counters::default();
    for shard in counters {
        total.merge(shard);
    }
    total
}

/// What the node and the machine looked like at one instant.
struct Snapshot {
    at: Instant,
    counters: Counters,
    xdp: Option<[u64; VERDICT_COUNT]>,
    shard_cpu_ns: u64,
    softirq_ns: u64,
    drops: VethDrops,
    /// (receiver, sender) namespaces.
    udp_receive_buffer_errors: (u64, u64),
}

/// A running node with its subscriber. Field order is drop order: subscriber, then node.
struct RunningNode {
    subscriber: SubscriberThread,
    handle: NodeHandle,
    filter: FilterChoice,
}

/// The veth attack scenario (module doc): a node in the receiving namespace, clients and
/// flood in the sending one. Field order is drop order: the node stops before the namespaces
/// are deleted.
pub struct VethScenario {
    node: Option<RunningNode>,
    publisher_link: ClientLinkConfig,
    subscriber_link: ClientLinkConfig,
    keys: ForgeryKeys,
    next_tag: u8,
    veth: VethPair,
}

impl VethScenario {
    /// Creates the namespaces and the veth pair, and fresh link keys; no node yet.
    pub fn create() -> Result<VethScenario, BenchError> {
        let veth = VethPair::create()?;
        let node = SocketAddr::from((veth.receiver_ip(), NODE_PORT));
        let link = |link_id: u32| -> Result<ClientLinkConfig, BenchError> {
            Ok(ClientLinkConfig {
                node,
                node_shards: 1,
                link_id,
                key: LinkKey(random_bytes()?),
                datagram_length_max: DATAGRAM_LENGTH_DEFAULT,
            })
        };
        let publisher_link = link(PUBLISHER_LINK_ID)?;
        let subscriber_link = link(SUBSCRIBER_LINK_ID)?;
        let attacker_link = link(ATTACKER_LINK_ID)?;
        let stream_part = StreamPart::parse(STREAM_PART).map_err(|e| BenchError::new(e.0))?.key();
        let keys = ForgeryKeys {
            publisher_link_id: publisher_link.link_id,
            publisher_link_key: publisher_link.key,
            attacker_link_id: attacker_link.link_id,
            attacker_link_key: attacker_link.key,
            stream_part,
            quarantined_publisher: PublisherKey::generate().address(),
        };
        Ok(VethScenario { node: None, publisher_link, subscriber_link, keys, next_tag: 1, veth })
    }

    pub fn veth(&self) -> &VethPair {
        &self.veth
    }

    /// The running node, if any.
    pub fn node(&self) -> Option<&NodeHandle> {
        self.node.as_ref().map(|node| &node.handle)
    }

    /// The publisher the node was told to quarantine.
    pub fn quarantined_publisher(&self) -> [u8; 20] {
        self.keys.quarantined_publisher
    }

    fn node_config(&self, filter: FilterChoice) -> String {
        let mut config = format!(
            "[node]\nlisten = \"{}:{NODE_PORT}\"\nshards = 1\ndatagram_length_max = {DATAGRAM_LENGTH_DEFAULT}\nverify = \"all\"\n\n\
             [xdp]\nmode = \"{}\"\ninterface = \"{RECEIVER_INTERFACE}\"\n",
            self.veth.receiver_ip(),
            match filter {
                FilterChoice::XdpNative => "native",
                FilterChoice::Off => "off",
            }
        );
        for (link_id, key) in [
            (self.publisher_link.link_id, &self.publisher_link.key),
            (self.subscriber_link.link_id, &self.subscriber_link.key),
            (self.keys.attacker_link_id, &self.keys.attacker_link_key),
        ] {
            let hex: String = key.0.iter().map(|byte| format!("{byte:02x}")).collect();
            let _ = write!(config, "\n[[links]]\nid = {link_id}\nkey = \"{hex}\"\nrole = \"client\"\n");
        }
        config
    }

    /// Stops any running node, starts one with `filter`, quarantines the publisher, starts
    /// the subscriber, and returns once a probe message reached the subscriber and a
    /// quarantined-publisher datagram was dropped by the filter.
    pub fn start_node(&mut self, filter: FilterChoice) -> Result<(), BenchError> {
        self.stop_node()?;
        let config = NodeConfig::parse(&self.node_config(filter))
            .map_err(|e| BenchError::new(format!("generated node config is invalid (a bug): {e}")))?;
        let handle =
            self.veth.receiver.run(move || Node::start(config))?.map_err(|e| BenchError::new(format!("the node did not start: {e}")))?;
        let update = FilterUpdate::QuarantinePublisher { publisher: self.keys.quarantined_publisher, until_ns: u64::MAX };
        handle.update_filter(update).map_err(|e| BenchError::new(format!("quarantining the publisher: {e}")))?;
        let subscriber = SubscriberThread::start(&self.veth.sender, self.subscriber_link.clone(), self.keys.stream_part)?;
        self.node = Some(RunningNode { subscriber, handle, filter });
        self.wait_for_path()?;
        self.wait_for_quarantine()
    }

    /// Stops the node (and its subscriber), reporting a shard's error.
    pub fn stop_node(&mut self) -> Result<(), BenchError> {
        if let Some(node) = self.node.take() {
            drop(node.subscriber);
            node.handle.stop().map_err(|e| BenchError::new(format!("the node stopped with an error: {e}")))?;
        }
        Ok(())
    }

    fn running(&mut self) -> Result<&mut RunningNode, BenchError> {
        self.node.as_mut().ok_or_else(|| BenchError::new("no node running: call start_node first"))
    }

    /// Probe messages every 20 ms until the subscriber gets one.
    fn wait_for_path(&mut self) -> Result<(), BenchError> {
        let link = self.publisher_link.clone();
        let part = self.keys.stream_part;
        let node = self.node.as_mut().expect("started");
        let subscriber = &mut node.subscriber;
        let received = subscriber.received.clone();
        let seen = move || received.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(tag, _)| *tag == PROBE_TAG);
        let result = self.veth.sender.run(move || -> Result<(), BenchError> {
            let options =
                ClientOptions { publisher_key: Some(PublisherKey::generate()), signing: SigningMode::PerMessage, verify: false, gso: true };
            let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("probe publisher: {what}: {e}"));
            let mut probe = UdpClient::connect_with(&link, options).map_err(io("connect"))?;
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut payload = [0u8; 16];
            let mut sequence = 0;
            while !seen() {
                if Instant::now() > deadline {
                    return Err(BenchError::new(format!("no probe message reached the subscriber within {READY_TIMEOUT:?}")));
                }
                write_payload(&mut payload, PROBE_TAG, sequence);
                sequence += 1;
                probe.publish(&part, &Outgoing::binary(unix_time_ms(), &payload)).map_err(io("publish"))?;
                probe.flush().map_err(io("flush"))?;
                std::thread::sleep(Duration::from_millis(20));
            }
            probe.linger(Duration::from_millis(50)).map_err(io("linger"))
        })?;
        subscriber.check_running()?;
        result?;
        subscriber.take(PROBE_TAG);
        Ok(())
    }

    /// Quarantined-publisher datagrams every 20 ms (fresh sequences, a socket of their own)
    /// until the filter counts one: the quarantine is in force before any flood.
    fn wait_for_quarantine(&mut self) -> Result<(), BenchError> {
        let node = self.node.as_ref().expect("started");
        let observed = |handle: &NodeHandle| match node.filter {
            FilterChoice::XdpNative => handle.xdp_verdicts().map_or(0, |v| v[Verdict::QuarantinedPublisher as usize]),
            FilterChoice::Off => summed(&handle.counters()).get(Counter::DatagramsQuarantinedPublisher),
        };
        let before = observed(&node.handle);
        let keys = self.keys.clone();
        let target = SocketAddr::from((self.veth.receiver_ip(), NODE_PORT));
        let local = self.veth.sender_ip();
        let socket = self
            .veth
            .sender
            .run(move || UdpSocket::bind(SocketAddrV4::new(local, 0)))?
            .map_err(|e| BenchError::new(format!("probe socket: {e}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut datagram = [0u8; HEADER_LENGTH];
        let mut link_seq = 1;
        while observed(&node.handle) == before {
            if Instant::now() > deadline {
                return Err(BenchError::new(format!(
                    "the filter did not drop a quarantined publisher's datagram within {READY_TIMEOUT:?}"
                )));
            }
            keys.write_quarantined(link_seq, &mut datagram);
            link_seq += 1;
            socket.send_to(&datagram, target).map_err(|e| BenchError::new(format!("probe send: {e}")))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, BenchError> {
        let node = self.node.as_ref().ok_or_else(|| BenchError::new("no node running"))?;
        Ok(Snapshot {
            at: Instant::now(),
            counters: summed(&node.handle.counters()),
            xdp: node.handle.xdp_verdicts(),
            shard_cpu_ns: shard_cpu_ns()?,
            softirq_ns: softirq_ns()?,
            drops: self.veth.drops()?,
            udp_receive_buffer_errors: (
                self.veth.receiver.run(udp_receive_buffer_errors)??,
                self.veth.sender.run(udp_receive_buffer_errors)??,
            ),
        })
    }

    /// Forged datagrams the filter has counted so far, per kind: XDP verdicts with XDP on,
    /// the shards' counters with it off.
    fn forged_counted(&self) -> [u64; 4] {
        let Some(node) = &self.node else { return [0; 4] };
        match node.filter {
            FilterChoice::XdpNative => {
                let verdicts = node.handle.xdp_verdicts().unwrap_or([0; VERDICT_COUNT]);
                ForgedKind::ALL.map(|kind| verdicts[kind.verdict() as usize])
            }
            FilterChoice::Off => {
                let counters = summed(&node.handle.counters());
                ForgedKind::ALL.map(|kind| counters.get(kind.counter()))
            }
        }
    }

    /// Runs one phase: the flood (if any) starts, the publisher sends its messages, the flood
    /// stops (or finishes its counts), the subscriber drains, the counters settle.
    pub fn run_phase(&mut self, plan: &PhasePlan) -> Result<PhaseOutcome, BenchError> {
        let filter = self.running()?.filter;
        let tag = self.next_tag;
        self.next_tag = if self.next_tag == u8::MAX { 1 } else { self.next_tag + 1 };
        let forged_before = self.forged_counted();
        let before = self.snapshot()?;

        let stop_flood = Arc::new(AtomicBool::new(false));
        let mut flood_threads = Vec::new();
        if let Some(flood) = plan.flood {
            let threads = flood.threads.max(1);
            let target = SocketAddr::from((self.veth.receiver_ip(), NODE_PORT));
            for index in 0..threads {
                let share = |total: u64| total / threads as u64 + u64::from((index as u64) < total % threads as u64);
                let rate = match flood.rate {
                    FloodRate::PerSecond(rate) => Some(share(rate).max(1)),
                    FloodRate::Max => None,
                };
                let quota = flood.per_kind.map(|per_kind| [share(per_kind); 4]);
                let (keys, stop, local) = (self.keys.clone(), stop_flood.clone(), self.veth.sender_ip());
                let cpu = flood_cpu(index);
                flood_threads.push(
                    self.veth
                        .sender
                        .spawn(&format!("xdp-flood-{index}"), move || flood_thread(cpu, local, target, keys, rate, quota, stop))?,
                );
            }
        }

        let (link, part) = (self.publisher_link.clone(), self.keys.stream_part);
        let legit = plan.legit;
        let published = self.veth.sender.run(move || publish_legit(&link, part, tag, legit));
        if plan.flood.is_some_and(|flood| flood.per_kind.is_none()) {
            stop_flood.store(true, Ordering::Relaxed);
        }
        let flood = join_flood(flood_threads, &stop_flood);
        let published = published??;
        let flood = flood?;

        // Drain: until everything arrived or nothing more did for a while.
        let subscriber = &mut self.running()?.subscriber;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let (mut last, mut last_change) = (subscriber.count(tag), Instant::now());
        while (last as u64) < published.published && last_change.elapsed() < DRAIN_QUIET && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            subscriber.check_running()?;
            let now = subscriber.count(tag);
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
        }
        let after_drain = self.snapshot()?;

        // Settle: the filter's counts reach what was sent, or stop moving (XDP counters are
        // sampled every 100 ms by the node's policy thread).
        if let Some(flood) = &flood {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            let (mut last, mut last_change) = (self.forged_counted(), Instant::now());
            loop {
                let reached = (0..4).all(|k| last[k] - forged_before[k] >= flood.sent[k]);
                if reached || last_change.elapsed() >= SETTLE_QUIET || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                let now = self.forged_counted();
                if now != last {
                    (last, last_change) = (now, Instant::now());
                }
            }
        }
        let after = self.snapshot()?;
        let node = self.node.as_ref().expect("running");
        Ok(PhaseOutcome {
            name: plan.name.clone(),
            filter,
            filter_mode: node.handle.filter_mode().clone(),
            legit: plan.legit,
            published: published.published,
            publish_window: published.window,
            received: node.subscriber.take(tag),
            flood,
            xdp_verdicts: match (before.xdp, after.xdp) {
                (Some(b), Some(a)) => Some(std::array::from_fn(|i| a[i] - b[i])),
                _ => None,
            },
            xdp_verdicts_total: after.xdp,
            counters_before: before.counters,
            counters_after: after.counters,
            active_window: after_drain.at - before.at,
            shard_cpu_ns: after_drain.shard_cpu_ns - before.shard_cpu_ns,
            softirq_ns: after_drain.softirq_ns - before.softirq_ns,
            veth_drops: after.drops.since(&before.drops),
            node_receive_buffer_errors: after.udp_receive_buffer_errors.0 - before.udp_receive_buffer_errors.0,
            client_receive_buffer_errors: after.udp_receive_buffer_errors.1 - before.udp_receive_buffer_errors.1,
        })
    }
}

/// Joins the flood threads, stopping them if they overrun; sums what they sent.
fn join_flood(threads: Vec<JoinHandle<Result<FloodOutcome, BenchError>>>, stop: &AtomicBool) -> Result<Option<FloodOutcome>, BenchError> {
    if threads.is_empty() {
        return Ok(None);
    }
    let deadline = Instant::now() + FLOOD_OVERRUN_MAX;
    while threads.iter().any(|thread| !thread.is_finished()) {
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut total = FloodOutcome::default();
    for thread in threads {
        let outcome = thread.join().map_err(|_| BenchError::new("a flood thread panicked"))??;
        for (sum, sent) in total.sent.iter_mut().zip(outcome.sent) {
            *sum += sent;
        }
        total.replay_originals += outcome.replay_originals;
        total.send_errors += outcome.send_errors;
        total.elapsed = total.elapsed.max(outcome.elapsed);
    }
    Ok(Some(total))
}

/// What one phase measured.
#[derive(Clone, Debug)]
pub struct PhaseOutcome {
    pub name: String,
    pub filter: FilterChoice,
    pub filter_mode: FilterMode,
    pub legit: LegitPlan,
    pub published: u64,
    /// The publisher's first message to its last flush.
    pub publish_window: Duration,
    /// Sequences of this phase's messages the subscriber received, in arrival order.
    pub received: Vec<u64>,
    pub flood: Option<FloodOutcome>,
    /// XDP verdicts counted during the phase (`None` with XDP off).
    pub xdp_verdicts: Option<[u64; VERDICT_COUNT]>,
    /// XDP verdicts since the node started.
    pub xdp_verdicts_total: Option<[u64; VERDICT_COUNT]>,
    /// The node's counters (summed over shards) before and after the phase.
    pub counters_before: Counters,
    pub counters_after: Counters,
    /// Phase start to the end of the drain: the window of the CPU figures.
    pub active_window: Duration,
    /// utime + stime of the node's shard threads over `active_window`.
    pub shard_cpu_ns: u64,
    /// Softirq time of the machine over `active_window` (XDP on veth runs there).
    pub softirq_ns: u64,
    pub veth_drops: VethDrops,
    /// Datagrams a full socket buffer refused in the receiving namespace (the node's socket).
    pub node_receive_buffer_errors: u64,
    /// The same in the sending namespace (the clients' sockets).
    pub client_receive_buffer_errors: u64,
}

impl PhaseOutcome {
    /// Distinct messages of this phase the subscriber received.
    pub fn delivered(&self) -> u64 {
        let mut sequences = self.received.clone();
        sequences.sort_unstable();
        sequences.dedup();
        sequences.len() as u64
    }

    /// Client sends (each one or a GSO run of datagrams) that `veth-a`'s full qdisc dropped:
    /// its drops minus the flood's refused sends (every flood send error is a refusal there
    /// when the veth counters are zero). Legitimate traffic lost on the sending side.
    pub fn client_sends_lost(&self) -> u64 {
        self.veth_drops.sender_qdisc.saturating_sub(self.flood.map_or(0, |flood| flood.send_errors))
    }

    /// Delivered messages / the publisher's window.
    pub fn delivered_per_s(&self) -> f64 {
        self.delivered() as f64 / self.publish_window.as_secs_f64().max(1e-9)
    }

    pub fn published_per_s(&self) -> f64 {
        self.published as f64 / self.publish_window.as_secs_f64().max(1e-9)
    }

    /// The change of one node counter during the phase.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters_after.get(counter) - self.counters_before.get(counter)
    }

    pub fn shard_cpu_us_per_message(&self) -> f64 {
        self.shard_cpu_ns as f64 / 1000.0 / self.delivered().max(1) as f64
    }

    pub fn softirq_us_per_message(&self) -> f64 {
        self.softirq_ns as f64 / 1000.0 / self.delivered().max(1) as f64
    }

    pub fn shard_cpu_percent(&self) -> f64 {
        self.shard_cpu_ns as f64 / self.active_window.as_nanos().max(1) as f64 * 100.0
    }

    pub fn softirq_percent(&self) -> f64 {
        self.softirq_ns as f64 / self.active_window.as_nanos().max(1) as f64 * 100.0
    }

    /// Every counter that explains where forged and legitimate datagrams went, for failure
    /// messages and the report.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("phase {} ({}): published {}, delivered {}", self.name, self.filter_mode, self.published, self.delivered());
        if let Some(flood) = &self.flood {
            let _ = write!(out, "\n  forged sent:");
            for kind in ForgedKind::ALL {
                let _ = write!(out, " {}={}", kind.name(), flood.sent_of(kind));
            }
            let _ = write!(
                out,
                " (replay originals {}, send errors {}, {:.0}/s)",
                flood.replay_originals,
                flood.send_errors,
                flood.sent_per_s()
            );
        }
        if let Some(verdicts) = &self.xdp_verdicts {
            let _ = write!(out, "\n  xdp verdicts (phase):");
            for verdict in Verdict::ALL {
                let _ = write!(out, " {}={}", verdict.name(), verdicts[verdict as usize]);
            }
        }
        if let Some(verdicts) = &self.xdp_verdicts_total {
            let _ = write!(out, "\n  xdp verdicts (node total):");
            for verdict in Verdict::ALL {
                let _ = write!(out, " {}={}", verdict.name(), verdicts[verdict as usize]);
            }
        }
        let _ = write!(out, "\n  node counters (phase, nonzero):");
        for counter in Counter::ALL {
            let value = self.counter(counter);
            if value != 0 {
                let _ = write!(out, " {}={value}", counter.name());
            }
        }
        let _ = write!(
            out,
            "\n  drops: veth-a qdisc {} (flood refusals and lost client datagrams), veth-a tx {} rx {}, veth-b rx {} tx {}; \
             full UDP receive buffers: node {}, clients {}",
            self.veth_drops.sender_qdisc,
            self.veth_drops.sender_tx,
            self.veth_drops.sender_rx,
            self.veth_drops.receiver_rx,
            self.veth_drops.receiver_tx,
            self.node_receive_buffer_errors,
            self.client_receive_buffer_errors
        );
        out
    }

    pub fn to_json(&self) -> Value {
        let flood = self.flood.map(|flood| {
            let sent: serde_json::Map<String, Value> =
                ForgedKind::ALL.iter().map(|k| (k.name().to_string(), json!(flood.sent_of(*k)))).collect();
            json!({
                "sent": sent,
                "sent_total": flood.total(),
                "sent_per_s": flood.sent_per_s(),
                "replay_originals": flood.replay_originals,
                "send_errors": flood.send_errors,
                "elapsed_s": flood.elapsed.as_secs_f64(),
            })
        });
        let verdicts = |verdicts: &Option<[u64; VERDICT_COUNT]>| {
            verdicts.map(|v| {
                Verdict::ALL
                    .iter()
                    .map(|verdict| (verdict.name().to_string(), json!(v[*verdict as usize])))
                    .collect::<serde_json::Map<_, _>>()
            })
        };
        let counters: serde_json::Map<String, Value> =
            Counter::ALL.iter().map(|c| (c.name().to_string(), json!(self.counter(*c)))).filter(|(_, v)| v != &json!(0)).collect();
        json!({
            "filter": self.filter.name(),
            "filter_mode": self.filter_mode.name(),
            "legit_rate_per_s": self.legit.rate_per_s,
            "published": self.published,
            "published_per_s": self.published_per_s(),
            "delivered": self.delivered(),
            "delivered_per_s": self.delivered_per_s(),
            "delivered_fraction": self.delivered() as f64 / self.published.max(1) as f64,
            "publish_window_s": self.publish_window.as_secs_f64(),
            "active_window_s": self.active_window.as_secs_f64(),
            "shard_cpu_ms": self.shard_cpu_ns as f64 / 1e6,
            "shard_cpu_percent": self.shard_cpu_percent(),
            "shard_cpu_us_per_message": self.shard_cpu_us_per_message(),
            "softirq_ms": self.softirq_ns as f64 / 1e6,
            "softirq_percent": self.softirq_percent(),
            "softirq_us_per_message": self.softirq_us_per_message(),
            "flood": flood,
            "xdp_verdicts": verdicts(&self.xdp_verdicts),
            "node_counters": counters,
            "sender_qdisc_drops": self.veth_drops.sender_qdisc,
            "client_sends_lost": self.client_sends_lost(),
            "veth_drops": self.veth_drops.interfaces(),
            "node_receive_buffer_errors": self.node_receive_buffer_errors,
            "client_receive_buffer_errors": self.client_receive_buffer_errors,
        })
    }
}
