//! The forged datagrams and the flood threads that send them.

use super::*;

/// The four kinds of forged datagram the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForgedKind {
    /// A wrong link tag on the legitimate publisher's link id.
    BadTag,
    /// A copy of one valid datagram of the attacker's client link, already accepted once.
    Replayed,
    /// A link id the node does not have.
    UnknownLink,
    /// Correctly tagged (attacker's link, fresh sequence), single-publisher, naming the
    /// quarantined publisher.
    QuarantinedPublisher,
}

impl ForgedKind {
    pub const ALL: [ForgedKind; 4] = [ForgedKind::BadTag, ForgedKind::Replayed, ForgedKind::UnknownLink, ForgedKind::QuarantinedPublisher];

    /// The filter's verdict for it.
    pub fn verdict(self) -> Verdict {
        match self {
            ForgedKind::BadTag => Verdict::BadTag,
            ForgedKind::Replayed => Verdict::Replayed,
            ForgedKind::UnknownLink => Verdict::UnknownLink,
            ForgedKind::QuarantinedPublisher => Verdict::QuarantinedPublisher,
        }
    }

    /// The userspace counter for it.
    pub fn counter(self) -> Counter {
        match self {
            ForgedKind::BadTag => Counter::DatagramsBadTag,
            ForgedKind::Replayed => Counter::DatagramsReplayed,
            ForgedKind::UnknownLink => Counter::DatagramsUnknownLink,
            ForgedKind::QuarantinedPublisher => Counter::DatagramsQuarantinedPublisher,
        }
    }

    pub fn name(self) -> &'static str {
        self.verdict().name()
    }
}

/// Most datagrams per GSO send (the kernel allows 64 segments on every version we support).
const FLOOD_SEGMENTS_MAX: usize = 64;
/// Distinct templates per precomputed kind (variety in sequence and link id).
const TEMPLATES_PER_KIND: usize = 16;
/// First link id of the unknown ones.
const UNKNOWN_LINK_ID_FIRST: u32 = 0x7fff_0000;

/// What a flood thread needs to forge datagrams.
#[derive(Clone)]
pub(super) struct ForgeryKeys {
    pub(super) publisher_link_id: u32,
    pub(super) publisher_link_key: LinkKey,
    pub(super) attacker_link_id: u32,
    pub(super) attacker_link_key: LinkKey,
    pub(super) stream_part: StreamPartKey,
    pub(super) quarantined_publisher: [u8; 20],
}

impl ForgeryKeys {
    /// The valid datagram whose copies are the replays: an Unsubscribe on the attacker's link
    /// (harmless when the node accepts the original), link sequence 1.
    pub(super) fn replay_original(&self) -> [u8; HEADER_LENGTH] {
        let mut datagram = [0u8; HEADER_LENGTH];
        let fields = HeaderFields {
            kind: Kind::Unsubscribe,
            link_id: self.attacker_link_id,
            link_seq: 1,
            stream_part_key: self.stream_part.0,
            flags: 0,
            message_count: 0,
            total_length: HEADER_LENGTH as u16,
            publisher: [0; 20],
        };
        write_header(&fields, &self.attacker_link_key, &mut datagram);
        datagram
    }

    /// A quarantined-publisher datagram with link sequence `link_seq`.
    pub(super) fn write_quarantined(&self, link_seq: u64, out: &mut [u8]) {
        let fields = HeaderFields {
            kind: Kind::Data,
            link_id: self.attacker_link_id,
            link_seq,
            stream_part_key: self.stream_part.0,
            flags: FLAG_SINGLE_PUBLISHER,
            message_count: 0,
            total_length: HEADER_LENGTH as u16,
            publisher: self.quarantined_publisher,
        };
        write_header(&fields, &self.attacker_link_key, out);
    }
}

/// Builds GSO batches of forged datagrams, round-robin over the kinds that still have quota.
pub(super) struct Forger {
    keys: ForgeryKeys,
    bad_tag: Vec<[u8; HEADER_LENGTH]>,
    unknown_link: Vec<[u8; HEADER_LENGTH]>,
    replay: [u8; HEADER_LENGTH],
    /// Next link sequence for quarantined-publisher datagrams (the original replay is 1).
    next_seq: u64,
    cursor: usize,
}

impl Forger {
    fn new(keys: ForgeryKeys) -> Forger {
        let datagram = |link_id: u32, key: &LinkKey, link_seq: u64| {
            let mut bytes = [0u8; HEADER_LENGTH];
            let fields = HeaderFields {
                kind: Kind::Data,
                link_id,
                link_seq,
                stream_part_key: keys.stream_part.0,
                flags: 0,
                message_count: 0,
                total_length: HEADER_LENGTH as u16,
                publisher: [0; 20],
            };
            write_header(&fields, key, &mut bytes);
            bytes
        };
        let bad_tag = (0..TEMPLATES_PER_KIND as u64)
            .map(|i| {
                let mut bytes = datagram(keys.publisher_link_id, &keys.publisher_link_key, (1 << 40) + i);
                bytes[80] ^= 1; // never the right tag
                bytes
            })
            .collect();
        let stranger = LinkKey([0x5a; 32]);
        let unknown_link = (0..TEMPLATES_PER_KIND as u32).map(|i| datagram(UNKNOWN_LINK_ID_FIRST + i, &stranger, 1)).collect();
        let replay = keys.replay_original();
        Forger { keys, bad_tag, unknown_link, replay, next_seq: 2, cursor: 0 }
    }

    /// Appends up to `segments` datagrams to `out` (cleared first), taking kinds round-robin
    /// among those with `remaining` quota (`None`: unlimited), and counts them in `kinds`.
    fn fill(&mut self, segments: usize, remaining: &Option<[u64; 4]>, out: &mut Vec<u8>, kinds: &mut [u64; 4]) {
        out.clear();
        *kinds = [0; 4];
        let mut planned = [0u64; 4];
        for _ in 0..segments {
            let Some(index) = (0..4).map(|step| (self.cursor + step) % 4).find(|&k| remaining.is_none_or(|r| r[k] > planned[k])) else {
                break;
            };
            self.cursor = (index + 1) % 4;
            planned[index] += 1;
            let start = out.len();
            out.resize(start + HEADER_LENGTH, 0);
            let slot = &mut out[start..];
            match ForgedKind::ALL[index] {
                ForgedKind::BadTag => slot.copy_from_slice(&self.bad_tag[(planned[index] as usize) % TEMPLATES_PER_KIND]),
                ForgedKind::Replayed => slot.copy_from_slice(&self.replay),
                ForgedKind::UnknownLink => slot.copy_from_slice(&self.unknown_link[(planned[index] as usize) % TEMPLATES_PER_KIND]),
                ForgedKind::QuarantinedPublisher => {
                    self.keys.write_quarantined(self.next_seq, slot);
                    self.next_seq += 1;
                }
            }
        }
        *kinds = planned;
    }
}

/// What to flood with.
#[derive(Clone, Copy, Debug)]
pub struct FloodPlan {
    pub rate: FloodRate,
    /// Datagrams of each kind to send in total; `None`: until the phase's publisher is done.
    pub per_kind: Option<u64>,
    pub threads: usize,
}

/// What the flood sent (all threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodOutcome {
    /// Forged datagrams the kernel accepted, per [`ForgedKind::ALL`] index.
    pub sent: [u64; 4],
    /// Valid originals of the replays (one per thread), accepted by the node.
    pub replay_originals: u64,
    /// `sendmsg` calls refused (`ENOBUFS` from a full qdisc and the like); not counted as sent.
    pub send_errors: u64,
    /// From the first thread's start to the last one's end.
    pub elapsed: Duration,
}

impl FloodOutcome {
    pub fn sent_of(&self, kind: ForgedKind) -> u64 {
        self.sent[ForgedKind::ALL.iter().position(|k| *k == kind).expect("a kind")]
    }

    pub fn total(&self) -> u64 {
        self.sent.iter().sum()
    }

    pub fn sent_per_s(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The CPUs this process may run on (its affinity mask), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is an empty cpu_set_t; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the size of the set we own.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads a bit of the set we own; the index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Where flood thread `index` runs: the allowed CPUs except the first, which holds the node's
/// one shard (the node pins shard i to the i-th allowed CPU); `None` with a single CPU.
pub(super) fn flood_cpu(index: usize) -> Option<usize> {
    let cpus = allowed_cpus();
    (cpus.len() >= 2).then(|| cpus[1 + index % (cpus.len() - 1)])
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), BenchError> {
    // SAFETY: all-zero is an empty cpu_set_t; CPU_SET sets one bit below CPU_SETSIZE (cpu
    // comes from the affinity mask).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sets the calling thread's affinity from the set we own.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(BenchError::new(format!("cannot pin a flood thread to CPU {cpu}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// One flood thread: a socket of its own, the replay original, then GSO batches.
pub(super) fn flood_thread(
    cpu: Option<usize>,
    local: Ipv4Addr,
    target: SocketAddr,
    keys: ForgeryKeys,
    rate_per_s: Option<u64>,
    mut quota: Option<[u64; 4]>,
    stop: Arc<AtomicBool>,
) -> Result<FloodOutcome, BenchError> {
    precise_sleeps();
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    let started = Instant::now();
    let io = |what: &'static str| move |e: std::io::Error| BenchError::new(format!("flood socket: {what}: {e}"));
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 0)).map_err(io("bind"))?;
    socket.connect(target).map_err(io("connect"))?;
    // ENOBUFS from a full qdisc is reported instead of silently dropped (module doc).
    runnel_client::sockopt::set_int(&socket, libc::SOL_IP, libc::IP_RECVERR, 1).map_err(io("IP_RECVERR"))?;
    if runnel_client::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20).is_err() {
        let _ = runnel_client::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20);
    }
    let mut outcome = FloodOutcome::default();
    let mut forger = Forger::new(keys);
    socket.send(&forger.replay).map_err(io("sending the replay original"))?;
    outcome.replay_originals = 1;
    // The original must reach the filter before its copies (one socket keeps one queue, but
    // a pause costs nothing here).
    std::thread::sleep(Duration::from_millis(20));

    let pacer = rate_per_s.map(Pacer::new);
    let mut batch = Vec::with_capacity(FLOOD_SEGMENTS_MAX * HEADER_LENGTH);
    let mut kinds = [0u64; 4];
    let mut sent_total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut segments = FLOOD_SEGMENTS_MAX;
        if let Some(pacer) = &pacer {
            let allowed = pacer.due().saturating_sub(sent_total);
            if allowed == 0 {
                pacer.wait_for_next_tick();
                continue;
            }
            segments = segments.min(allowed as usize);
        }
        forger.fill(segments, &quota, &mut batch, &mut kinds);
        if batch.is_empty() {
            break; // every quota met
        }
        match send_gso(&socket, &batch, HEADER_LENGTH) {
            Ok(()) => {
                for (index, count) in kinds.iter().enumerate() {
                    outcome.sent[index] += count;
                    if let Some(quota) = &mut quota {
                        quota[index] -= count;
                    }
                }
                sent_total += kinds.iter().sum::<u64>();
            }
            Err(error) => {
                outcome.send_errors += 1;
                if !matches!(error.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED)) {
                    return Err(BenchError::new(format!("flood send: {error}")));
                }
                std::thread::yield_now();
            }
        }
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ForgeryKeys {
        ForgeryKeys {
            publisher_link_id: 1,
            publisher_link_key: LinkKey([1; 32]),
            attacker_link_id: 2,
            attacker_link_key: LinkKey([2; 32]),
            stream_part: StreamPartKey([3; 32]),
            quarantined_publisher: [4; 20],
        }
    }

    // Goal: batches interleave the four kinds, count exactly what they hold, stop at the
    // quotas, and each datagram is what its kind says (checked by the userspace filter, which
    // follows the same rules as the XDP program).
    #[test]
    fn forger_counts_and_forges_each_kind() {
        use runnel_core::filter::{Filter, RateLimit};
        use runnel_node::config::LinkRole;
        let keys = keys();
        let mut filter = Filter::new(false);
        filter.set_link(1, keys.publisher_link_key, LinkRole::Client, RateLimit::UNLIMITED);
        filter.set_link(2, keys.attacker_link_key, LinkRole::Client, RateLimit::UNLIMITED);
        filter.apply(&FilterUpdate::QuarantinePublisher { publisher: keys.quarantined_publisher, until_ns: u64::MAX });
        let from: SocketAddr = "10.77.1.1:5000".parse().unwrap();
        assert_eq!(filter.check(1, from, &keys.replay_original()), Verdict::Pass);
        let mut forger = Forger::new(keys);
        let mut quota = Some([10, 3, 0, 7]);
        let (mut batch, mut kinds) = (Vec::new(), [0u64; 4]);
        let mut verdicts = [0u64; VERDICT_COUNT];
        let mut total = [0u64; 4];
        loop {
            forger.fill(8, &quota, &mut batch, &mut kinds);
            if batch.is_empty() {
                break;
            }
            assert_eq!(batch.len(), kinds.iter().sum::<u64>() as usize * HEADER_LENGTH);
            for datagram in batch.chunks(HEADER_LENGTH) {
                verdicts[filter.check(1, from, datagram) as usize] += 1;
            }
            for (index, count) in kinds.iter().enumerate() {
                total[index] += count;
                quota.as_mut().unwrap()[index] -= count;
            }
        }
        assert_eq!(total, [10, 3, 0, 7]);
        for (index, kind) in ForgedKind::ALL.iter().enumerate() {
            assert_eq!(verdicts[kind.verdict() as usize], total[index], "{}", kind.name());
        }
        // Unlimited: full batches, round-robin.
        forger.fill(8, &None, &mut batch, &mut kinds);
        assert_eq!(kinds, [2, 2, 2, 2]);
    }
}
