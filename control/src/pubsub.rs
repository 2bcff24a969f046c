//! `runnel pub` and `runnel sub`: a client link to one node, from a link file or asked of
//! the node's control process (`--node <multiaddr>`, [`runnel_peering::client`]).

use runnel_client::{ClientLinkConfig, ClientOptions, Outgoing, PublisherThread, SigningMode, UdpClient, FRAMES_PER_ROOT_DEFAULT};
use runnel_proto::crypto::{address_hex, PublisherKey};
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::ContentType;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runnel_peering::client::ClientSession;
use runnel_peering::wire::ClientAccess;
use runnel_peering::Identity;

/// How long `--node` waits for the node to grant a client link.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client's link comes from: exactly one of a file or a node to ask.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct LinkSource {
    /// Client link file (TOML: node, node_shards, link_id, key), as `runnel dev --static` writes them.
    #[arg(long)]
    pub link: Option<PathBuf>,
    /// Ask this node's control process for a client link: its peer address, a multiaddr
    /// ending in /p2p/<PeerId> (`runnel control` prints it as "peer listening on").
    #[arg(long, value_name = "MULTIADDR")]
    pub node: Option<String>,
}

impl LinkSource {
    /// The link, and for `--node` the session that holds it (keep it alive while the link is
    /// used: the node removes the link when the session's connection closes).
    pub(crate) fn open(
        &self,
        part: &StreamPart,
        access: ClientAccess,
        identity: impl FnOnce() -> Result<Identity, String>,
    ) -> Result<(ClientLinkConfig, Option<ClientSession>), String> {
        if let Some(path) = &self.link {
            return Ok((ClientLinkConfig::load(path).map_err(|e| e.to_string())?, None));
        }
        let text = self.node.as_deref().expect("clap requires --link or --node");
        let address = text.parse().map_err(|e| format!("--node {text:?}: {e}"))?;
        let session =
            ClientSession::open(identity()?, &address, part.key(), access, GRANT_TIMEOUT).map_err(|e| format!("--node {text}: {e}"))?;
        Ok((session.link_config(), Some(session)))
    }
}

/// Whether a `--node` session lost its node (the link is gone with it).
fn lost(session: &Option<ClientSession>) -> bool {
    session.as_ref().is_some_and(|session| !session.connected())
}

const LOST_NODE: &str = "lost the connection to the node's control process (the client link is gone)";

/// Which signatures a publisher makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Signatures {
    /// One ECDSA signature per message (default for low rates).
    Single,
    /// One ECDSA signature per batch (blake3 Merkle root): for high rates.
    Batch,
}

impl Signatures {
    pub fn mode(self) -> SigningMode {
        match self {
            Signatures::Single => SigningMode::PerMessage,
            Signatures::Batch => SigningMode::Batch { frames_per_root_max: FRAMES_PER_ROOT_DEFAULT },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub link: LinkSource,
    /// Stream part to publish to: `0x<owner>/<path>#<partition>`.
    #[arg(long)]
    pub stream: String,
    /// The publisher's key file (mode 0600): 64 hex digits, or an encrypted Web3 keystore
    /// (`runnel keygen --out` writes either). Default: the hex key in $RUNNEL_PRIVATE_KEY.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// File holding the keystore's password (mode 0600). Default: $RUNNEL_KEYSTORE_PASSWORD.
    #[arg(long, requires = "key_file")]
    pub password_file: Option<PathBuf>,
    /// Messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publish this many generated messages instead of reading lines from stdin.
    #[arg(long)]
    pub count: Option<u64>,
    /// Payload size of generated messages in bytes (implies generated messages).
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, value_enum, default_value_t = Signatures::Single)]
    pub signatures: Signatures,
}

#[derive(Debug, clap::Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub link: LinkSource,
    /// Stream part to subscribe to: `0x<owner>/<path>#<partition>`.
    #[arg(long)]
    pub stream: String,
    /// Print raw payloads (one per line) instead of JSON lines.
    #[arg(long)]
    pub raw: bool,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Do not verify publisher signatures (the node already does unless it runs verify = "none").
    #[arg(long)]
    pub no_verify: bool,
    /// The subscriber's account key (0600 key file or keystore): with `--node`, a node that
    /// follows the chain admits it only with Subscribe permission. Default: a fresh key.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// File holding the keystore's password (mode 0600). Default: $RUNNEL_KEYSTORE_PASSWORD.
    #[arg(long, requires = "key_file")]
    pub password_file: Option<PathBuf>,
}

/// The libp2p identity of a publisher key (the same secp256k1 key).
pub(crate) fn identity_of(key: &PublisherKey) -> Result<Identity, String> {
    let mut digits = key.secret_hex().into_bytes();
    let mut bytes = [0u8; 32];
    let decoded = hex::decode_to_slice(digits.strip_prefix(b"0x").unwrap_or(&digits), &mut bytes);
    digits.fill(0);
    let identity =
        decoded.map_err(|e| format!("publisher key as an identity: {e}")).and_then(|()| Identity::from_bytes(&bytes).map_err(|e| e.0));
    bytes.fill(0);
    std::hint::black_box(&mut bytes);
    identity
}

pub fn load_publisher_key(key_file: Option<&Path>, password_file: Option<&Path>) -> Result<PublisherKey, String> {
    if let Some(path) = key_file {
        return crate::keygen::load_key_file(path, password_file).map_err(|e| format!("--key-file: {e}"));
    }
    let text = std::env::var("RUNNEL_PRIVATE_KEY").map_err(|_| {
        "no publisher key: pass --key-file FILE or set RUNNEL_PRIVATE_KEY (`runnel keygen --out FILE` makes a key file)".to_string()
    })?;
    let mut bytes = text.into_bytes();
    let key = std::str::from_utf8(&bytes)
        .map_err(|_| "RUNNEL_PRIVATE_KEY: not text".to_string())
        .and_then(|text| PublisherKey::from_hex(text).map_err(|e| format!("RUNNEL_PRIVATE_KEY: {e}")));
    bytes.fill(0);
    key
}

/// The publisher thread stopped on an error: say which (it ends the thread).
fn sent_error(publisher: PublisherThread) -> String {
    match publisher.finish() {
        Err(error) => format!("send: {error}"),
        Ok(_) => "send: the publisher thread stopped".to_string(),
    }
}

pub fn run_pub(args: PubArgs) -> Result<(), String> {
    let part = StreamPart::parse(&args.stream).map_err(|e| format!("--stream: {e}"))?;
    let key = load_publisher_key(args.key_file.as_deref(), args.password_file.as_deref())?;
    // The publisher's key is also its libp2p identity: the node sees which account asked.
    let (link, session) = args.link.open(&part, ClientAccess::Publish, || identity_of(&key))?;
    let options = ClientOptions { publisher_key: Some(key.clone()), signing: args.signatures.mode(), verify: false, gso: true };
    let client = UdpClient::connect_with(&link, options).map_err(|e| format!("cannot open client link: {e}"))?;
    // Stays 200 ms after the last message to answer the node's NAKs and probe a lost tail:
    // the publisher holds the only other copy of its newest messages.
    let publisher = PublisherThread::spawn(client, Duration::from_millis(200)).map_err(|e| format!("publisher thread: {e}"))?;
    let stream_key = part.key();
    logln!("runnel pub: publishing to {part} as {} via {}", address_hex(&key.address()), link.node);
    let started = Instant::now();
    let mut published = 0u64;
    let mut pace = Pacer::new(args.rate);
    if args.count.is_some() || args.size.is_some() {
        let count = args.count.unwrap_or(u64::MAX);
        let size = args.size.unwrap_or(64);
        let mut payload = vec![b'x'; size];
        while published < count && !crate::signals::stop_requested() {
            if published.is_multiple_of(1024) && lost(&session) {
                return Err(LOST_NODE.into());
            }
            let stamp = published.to_le_bytes();
            let n = size.min(8);
            payload[..n].copy_from_slice(&stamp[..n]);
            if publisher.publish(&stream_key, &Outgoing::binary(runnel_client::unix_time_ms(), &payload)).is_err() {
                return Err(sent_error(publisher));
            }
            published += 1;
            pace.after_one();
        }
    } else {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if crate::signals::stop_requested() {
                break;
            }
            let line = line.map_err(|e| format!("reading stdin: {e}"))?;
            if lost(&session) {
                return Err(LOST_NODE.into());
            }
            let is_json = serde_json::from_str::<serde_json::Value>(&line).is_ok();
            let now = runnel_client::unix_time_ms();
            let message = if is_json { Outgoing::json(now, line.as_bytes()) } else { Outgoing::binary(now, line.as_bytes()) };
            // The thread sends it at once if it is idle: the next line may be long in coming.
            if publisher.publish(&stream_key, &message).is_err() {
                return Err(sent_error(publisher));
            }
            published += 1;
            pace.after_one();
        }
    }
    publisher.finish().map_err(|e| format!("send: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    logln!("runnel pub: {published} messages in {seconds:.2} s ({:.0}/s)", published as f64 / seconds.max(1e-9));
    Ok(())
}

/// Paces a publishing loop to `rate` messages per second (0: as fast as it can).
///
/// It only sleeps: when messages leave is the [`PublisherThread`]'s business (at once when it
/// is idle, together when they accumulate), so no timer holds a message back. It sleeps only
/// when at least [`SLEEP_MIN`] ahead of the schedule, since shorter sleeps overshoot.
pub struct Pacer {
    rate: u64,
    started: Instant,
    done: u64,
}

/// The shortest sleep the pacer takes (below it, it lets the loop run ahead a little).
pub const SLEEP_MIN: Duration = Duration::from_micros(500);

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Self { rate, started: Instant::now(), done: 0 }
    }

    /// Counts one message and sleeps if the loop is ahead of the rate.
    pub fn after_one(&mut self) {
        let sleep = self.step(self.started.elapsed());
        if !sleep.is_zero() {
            std::thread::sleep(sleep);
        }
    }

    /// [`Pacer::after_one`]'s sleep for a message counted `elapsed` after the start.
    pub fn step(&mut self, elapsed: Duration) -> Duration {
        self.done += 1;
        match self.rate {
            0 => Duration::ZERO,
            rate => {
                let due = Duration::from_secs_f64(self.done as f64 / rate as f64);
                due.checked_sub(elapsed).filter(|ahead| *ahead >= SLEEP_MIN).unwrap_or(Duration::ZERO)
            }
        }
    }
}

pub fn run_sub(args: SubArgs) -> Result<(), String> {
    let part = StreamPart::parse(&args.stream).map_err(|e| format!("--stream: {e}"))?;
    let identity = || match &args.key_file {
        Some(path) => {
            identity_of(&crate::keygen::load_key_file(path, args.password_file.as_deref()).map_err(|e| format!("--key-file: {e}"))?)
        }
        None => Ok(Identity::generate()),
    };
    let (link, session) = args.link.open(&part, ClientAccess::Subscribe, identity)?;
    let options = ClientOptions { publisher_key: None, verify: !args.no_verify, ..ClientOptions::default() };
    let mut client = UdpClient::connect_with(&link, options).map_err(|e| format!("cannot open client link: {e}"))?;
    let stream_key = part.key();
    client.subscribe(&stream_key).map_err(|e| format!("subscribe: {e}"))?;
    logln!("runnel sub: subscribed to {part} via {}", link.node);
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let limit = args.count.unwrap_or(u64::MAX);
    let mut received = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let stream_text = part.to_string();
    while received < limit && !crate::signals::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) {
        if lost(&session) {
            return Err(LOST_NODE.into());
        }
        let mut write_error = None;
        client
            .recv(Duration::from_millis(100), |delivery| {
                if received >= limit || write_error.is_some() {
                    return;
                }
                received += 1;
                let result = if args.raw {
                    out.write_all(delivery.payload).and_then(|_| out.write_all(b"\n"))
                } else {
                    let payload = match delivery.content_type {
                        ContentType::Json => serde_json::from_slice::<serde_json::Value>(delivery.payload)
                            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(delivery.payload).into_owned())),
                        ContentType::Binary => serde_json::Value::String(hex::encode(delivery.payload)),
                    };
                    let line = serde_json::json!({
                        "stream_part": stream_text,
                        "publisher": address_hex(&delivery.publisher),
                        "chain_id": delivery.chain_id,
                        "sequence": delivery.sequence,
                        "timestamp_ms": delivery.timestamp_ms,
                        "content_type": if delivery.content_type == ContentType::Json { "json" } else { "binary" },
                        "payload": payload,
                    });
                    writeln!(out, "{line}")
                };
                if let Err(error) = result {
                    write_error = Some(error);
                }
            })
            .map_err(|e| format!("receive: {e}"))?;
        if let Some(error) = write_error {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(format!("writing stdout: {error}"));
        }
        out.flush().ok();
    }
    out.flush().ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    // Goal: at 1k msgs/s each message is followed by the sleep to its successor's slot.
    #[test]
    fn sleeps_to_the_next_slot() {
        let mut pacer = Pacer::new(1000);
        for k in 0..5u64 {
            // Message k+1 is published right after the sleep for message k ended.
            assert_eq!(pacer.step(us(k * 1000 + 20)), us(980), "message {}", k + 1);
        }
    }

    // Goal: a loop that runs ahead by less than SLEEP_MIN does not sleep; the message that
    // takes it over SLEEP_MIN sleeps off the whole lead.
    #[test]
    fn runs_ahead_a_little_then_sleeps_the_lead_off() {
        let mut pacer = Pacer::new(10_000);
        for burst in 0..3u64 {
            // Messages 1..=5 of a burst are published 1 µs apart, 100 µs ahead of the rate each.
            let woke = burst * 600;
            let sleeps: Vec<Duration> = (0..6).map(|i| pacer.step(us(woke + i))).collect();
            assert_eq!(sleeps, [Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO, us(595)], "burst {burst}");
        }
    }

    // Goal: rate 0, or a loop behind its schedule, never sleeps.
    #[test]
    fn never_sleeps_when_unpaced_or_behind() {
        for rate in [0, 1_000_000] {
            let mut pacer = Pacer::new(rate);
            assert!((0..3000u64).all(|i| pacer.step(us(50_000 + i)).is_zero()), "rate {rate}");
        }
    }
}
