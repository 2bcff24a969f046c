//! `runnel pub` and `runnel sub`: a client link to one node.

use runnel_client::{ClientLinkConfig, ClientOptions, Outgoing, SigningMode, UdpClient, FRAMES_PER_ROOT_DEFAULT};
use runnel_proto::crypto::{address_hex, PublisherKey};
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::ContentType;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Client link file (TOML: node, node_shards, link_id, key), as `runnel dev` writes them.
    #[arg(long)]
    pub link: PathBuf,
    /// Stream part to publish to: `0x<owner>/<path>#<partition>`.
    #[arg(long)]
    pub stream: String,
    /// File holding the publisher's private key (hex). Default: $RUNNEL_PRIVATE_KEY.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
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
    /// Client link file (TOML), as for `runnel pub`.
    #[arg(long)]
    pub link: PathBuf,
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
}

pub fn load_publisher_key(key_file: Option<&PathBuf>) -> Result<PublisherKey, String> {
    let text = match key_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read --key-file {}: {e}", path.display()))?,
        None => std::env::var("RUNNEL_PRIVATE_KEY")
            .map_err(|_| "no publisher key: pass --key-file FILE or set RUNNEL_PRIVATE_KEY (`runnel keygen` makes one)".to_string())?,
    };
    // A key file may be the JSON `runnel keygen` prints, or bare hex.
    let hex_text = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("private_key").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or(text);
    PublisherKey::from_hex(&hex_text).map_err(|e| format!("publisher key: {e}"))
}

fn load_link(path: &std::path::Path) -> Result<ClientLinkConfig, String> {
    ClientLinkConfig::load(path).map_err(|e| e.to_string())
}

pub fn run_pub(args: PubArgs) -> Result<(), String> {
    let part = StreamPart::parse(&args.stream).map_err(|e| format!("--stream: {e}"))?;
    let key = load_publisher_key(args.key_file.as_ref())?;
    let link = load_link(&args.link)?;
    let options = ClientOptions { publisher_key: Some(key.clone()), signing: args.signatures.mode(), verify: false, gso: true };
    let mut client = UdpClient::connect_with(&link, options).map_err(|e| format!("cannot open client link: {e}"))?;
    let stream_key = part.key();
    eprintln!("runnel pub: publishing to {part} as {} via {}", address_hex(&key.address()), link.node);
    let started = Instant::now();
    let mut published = 0u64;
    let mut pace = Pacer::new(args.rate);
    if args.count.is_some() || args.size.is_some() {
        let count = args.count.unwrap_or(u64::MAX);
        let size = args.size.unwrap_or(64);
        let mut payload = vec![b'x'; size];
        while published < count && !crate::signals::stop_requested() {
            let stamp = published.to_le_bytes();
            let n = size.min(8);
            payload[..n].copy_from_slice(&stamp[..n]);
            client.publish(&stream_key, &Outgoing::binary(runnel_client::unix_time_ms(), &payload)).map_err(|e| format!("publish: {e}"))?;
            published += 1;
            pace.after_one(|| client.flush()).map_err(|e| format!("send: {e}"))?;
        }
    } else {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if crate::signals::stop_requested() {
                break;
            }
            let line = line.map_err(|e| format!("reading stdin: {e}"))?;
            let is_json = serde_json::from_str::<serde_json::Value>(&line).is_ok();
            let now = runnel_client::unix_time_ms();
            let message = if is_json { Outgoing::json(now, line.as_bytes()) } else { Outgoing::binary(now, line.as_bytes()) };
            client.publish(&stream_key, &message).map_err(|e| format!("publish: {e}"))?;
            // Flushed at once: the next line may be a long time coming.
            client.flush().map_err(|e| format!("send: {e}"))?;
            published += 1;
            pace.after_one(|| Ok::<(), String>(()))?;
        }
    }
    client.flush().map_err(|e| format!("send: {e}"))?;
    // Stay a moment to answer the node's NAKs and probe a lost tail: the publisher holds
    // the only other copy of its newest messages.
    client.linger(Duration::from_millis(200)).map_err(|e| format!("send: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("runnel pub: {published} messages in {seconds:.2} s ({:.0}/s)", published as f64 / seconds.max(1e-9));
    Ok(())
}

/// Paces a publishing loop to `rate` messages per second and decides when it flushes.
///
/// A message waits in the client's open datagram (and batch) until a flush, so the pacer
/// flushes whatever is pending *before* it sleeps: an idle publisher never holds a message
/// for a timer. A loop that does not sleep (behind its rate, or `rate` 0) flushes once its
/// oldest pending message has waited [`PENDING_AGE_MAX`], so datagrams still fill up at high
/// rates. It sleeps only when at least [`SLEEP_MIN`] ahead, since shorter sleeps overshoot.
pub struct Pacer {
    rate: u64,
    started: Instant,
    done: u64,
    /// When the oldest message not yet flushed was counted (time since `started`).
    pending_since: Option<Duration>,
}

/// The longest a message waits for a flush while the publishing loop is busy.
pub const PENDING_AGE_MAX: Duration = Duration::from_millis(1);
/// The shortest sleep the pacer takes (below it, it lets the loop run ahead a little).
pub const SLEEP_MIN: Duration = Duration::from_micros(500);

/// What a loop does after one message: flush first if `flush`, then sleep for `sleep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaceStep {
    pub flush: bool,
    pub sleep: Duration,
}

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Self { rate, started: Instant::now(), done: 0, pending_since: None }
    }

    /// Counts one message (just published, not flushed); flushes with `flush` when it is
    /// time, then sleeps if the loop is ahead of the rate.
    pub fn after_one<E>(&mut self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let step = self.step(self.started.elapsed());
        if step.flush {
            flush()?;
        }
        if !step.sleep.is_zero() {
            std::thread::sleep(step.sleep);
        }
        Ok(())
    }

    /// [`Pacer::after_one`]'s decision for a message counted `elapsed` after the start.
    pub fn step(&mut self, elapsed: Duration) -> PaceStep {
        self.done += 1;
        let pending_since = *self.pending_since.get_or_insert(elapsed);
        let sleep = match self.rate {
            0 => Duration::ZERO,
            rate => {
                let due = Duration::from_secs_f64(self.done as f64 / rate as f64);
                due.checked_sub(elapsed).filter(|ahead| *ahead >= SLEEP_MIN).unwrap_or(Duration::ZERO)
            }
        };
        let flush = !sleep.is_zero() || elapsed.saturating_sub(pending_since) >= PENDING_AGE_MAX;
        if flush {
            self.pending_since = None;
        }
        PaceStep { flush, sleep }
    }
}

pub fn run_sub(args: SubArgs) -> Result<(), String> {
    let part = StreamPart::parse(&args.stream).map_err(|e| format!("--stream: {e}"))?;
    let link = load_link(&args.link)?;
    let options = ClientOptions { publisher_key: None, verify: !args.no_verify, ..ClientOptions::default() };
    let mut client = UdpClient::connect_with(&link, options).map_err(|e| format!("cannot open client link: {e}"))?;
    let stream_key = part.key();
    client.subscribe(&stream_key).map_err(|e| format!("subscribe: {e}"))?;
    eprintln!("runnel sub: subscribed to {part} via {}", link.node);
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let limit = args.count.unwrap_or(u64::MAX);
    let mut received = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let stream_text = part.to_string();
    while received < limit && !crate::signals::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) {
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

    // Goal: at a low rate every message is flushed before the pacer sleeps, so it never waits
    // out a sleep in the open datagram (the old pacer flushed after sleeping: ~1 ms at 1k/s).
    #[test]
    fn flushes_before_sleeping() {
        let mut pacer = Pacer::new(1000);
        for k in 0..5u64 {
            // Message k+1 is published right after the sleep for message k ended.
            let step = pacer.step(us(k * 1000 + 20));
            assert_eq!(step, PaceStep { flush: true, sleep: us(980) }, "message {}", k + 1);
        }
    }

    // Goal: a loop that runs ahead by less than SLEEP_MIN neither sleeps nor flushes; the
    // message that takes it over SLEEP_MIN flushes everything pending, then sleeps.
    #[test]
    fn batches_a_burst_then_flushes_it_before_the_sleep() {
        let mut pacer = Pacer::new(10_000);
        let idle = PaceStep { flush: false, sleep: Duration::ZERO };
        let flush_and_sleep = PaceStep { flush: true, sleep: us(595) };
        for burst in 0..3u64 {
            // Messages 1..=5 of a burst are published 1 µs apart, 100 µs ahead of the rate each.
            let woke = burst * 600;
            let steps: Vec<PaceStep> = (0..6).map(|i| pacer.step(us(woke + i))).collect();
            assert_eq!(steps, [idle, idle, idle, idle, idle, flush_and_sleep], "burst {burst}");
        }
    }

    // Goal: a loop that never sleeps (as fast as possible, or behind its rate) flushes once
    // the oldest pending message has waited PENDING_AGE_MAX, not on every message.
    #[test]
    fn busy_loop_flushes_by_age() {
        for rate in [0, 1_000_000] {
            let mut pacer = Pacer::new(rate);
            // 50 ms into the run, 1 µs per message: behind even a 1M msgs/s schedule.
            let start = us(50_000);
            let flushes: Vec<u64> = (0..3000u64).filter(|i| pacer.step(start + us(*i)).flush).collect();
            assert_eq!(flushes, vec![1000, 2001], "rate {rate}: flush when the first pending message is 1 ms old");
        }
    }
}
