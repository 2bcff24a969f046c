//! `runnel bench …`: the benchmark subcommands, their flags, and `--help`.
//!
//! Every subcommand declares its flags once, in a table of [`Flag`]s: the flag, the value it
//! takes, what it does, how to show its default, and how it sets the option. Parsing, the
//! error for a flag it does not know and `--help` all read that table, so the help cannot
//! drift from what is accepted. Defaults shown are rendered from the subcommand's own default
//! options, not written down a second time. `--json` and `-h`/`--help` are common to all.

use crate::{
    BenchError, ChainOptions, FanoutOptions, FloodRate, LatencyOptions, RelayChainOptions, SimOptions, UdpCeilingOptions, XdpOptions,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// How a flag sets a subcommand's options `O`.
enum Takes<O> {
    /// `--flag VALUE`: the value's name in help, and what parses and stores it.
    Value(&'static str, fn(&mut O, &str) -> Result<(), BenchError>),
    /// `--flag` alone.
    Switch(fn(&mut O)),
}

/// One flag of a subcommand.
struct Flag<O> {
    name: &'static str,
    takes: Takes<O>,
    /// What it does, one line.
    help: &'static str,
    /// Its default, rendered from the subcommand's default options.
    default: fn(&O) -> String,
}

/// A benchmark subcommand: its flags and the benchmark it runs.
struct Subcommand<O: 'static> {
    name: &'static str,
    summary: &'static str,
    /// The options when no flag is given.
    defaults: fn() -> O,
    flags: &'static [Flag<O>],
    /// Runs the benchmark; returns its report as JSON and as a table.
    run: fn(O) -> Result<(Value, String), BenchError>,
}

/// What every subcommand offers, whatever its options type.
pub trait Command: Sync {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// Every flag it accepts, the common ones included.
    fn flag_names(&self) -> Vec<&'static str>;
    /// `runnel bench NAME --help`: one line per flag with what it does and its default.
    fn help(&self) -> String;
    /// Parses `args` (after the subcommand's name) and runs, or prints help.
    fn run(&self, args: &[String]) -> Result<(), BenchError>;
}

/// `--json`: the only flag every subcommand shares besides help.
const JSON_FLAG: &str = "--json";
const HELP_FLAGS: [&str; 2] = ["-h", "--help"];

impl<O> Command for Subcommand<O> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        self.summary
    }

    fn flag_names(&self) -> Vec<&'static str> {
        self.flags.iter().map(|flag| flag.name).chain([JSON_FLAG]).chain(HELP_FLAGS).collect()
    }

    fn help(&self) -> String {
        let defaults = (self.defaults)();
        let mut out = format!("runnel bench {}: {}\n\nusage: runnel bench {} [flags]\n\nflags:\n", self.name, self.summary, self.name);
        for flag in self.flags {
            let usage = match flag.takes {
                Takes::Value(value_name, _) => format!("{} {value_name}", flag.name),
                Takes::Switch(_) => flag.name.to_string(),
            };
            out += &format!("  {usage:<34}{} (default: {})\n", flag.help, (flag.default)(&defaults));
        }
        out += &format!(
            "  {JSON_FLAG:<34}print JSON on stdout instead of the table: one object, one per line for several runs (default: table)\n"
        );
        out += &format!("  {:<34}print this help\n", HELP_FLAGS.join(", "));
        out
    }

    fn run(&self, args: &[String]) -> Result<(), BenchError> {
        if args.iter().any(|arg| HELP_FLAGS.contains(&arg.as_str())) {
            print!("{}", self.help());
            return Ok(());
        }
        let (options, json) = self.parse(args)?;
        let (report_json, table) = (self.run)(options)?;
        match report_json {
            // Several reports (sim: one per churn level): one object per line.
            Value::Array(reports) if json => reports.iter().for_each(|report| println!("{report}")),
            report_json if json => println!("{report_json}"),
            _ => print!("{table}"),
        }
        Ok(())
    }
}

impl<O> Subcommand<O> {
    /// The options `args` ask for, and whether they ask for JSON.
    fn parse(&self, args: &[String]) -> Result<(O, bool), BenchError> {
        let mut options = (self.defaults)();
        let mut json = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == JSON_FLAG {
                json = true;
                continue;
            }
            let flag = self.flags.iter().find(|flag| flag.name == arg).ok_or_else(|| {
                BenchError::new(format!("unknown flag {arg} for runnel bench {0}; `runnel bench {0} --help` lists its flags", self.name))
            })?;
            match flag.takes {
                Takes::Switch(set) => set(&mut options),
                Takes::Value(value_name, set) => {
                    let value = args.next().ok_or_else(|| BenchError::new(format!("{arg} needs a value: {arg} {value_name}")))?;
                    set(&mut options, value).map_err(|e| BenchError::new(format!("{arg} {e}")))?;
                }
            }
        }
        Ok((options, json))
    }
}

/// Every `runnel bench` subcommand, in the order `runnel bench --help` lists them.
pub static COMMANDS: [&dyn Command; 7] = [&FANOUT, &RELAY_CHAIN, &LATENCY, &UDP_CEILING, &XDP, &SIM, &CHAIN];

/// Runs `runnel bench <args>`.
pub fn run(args: &[String]) -> Result<(), BenchError> {
    let Some((name, rest)) = args.split_first() else {
        return Err(BenchError::new(format!("which benchmark?\n{}", overview())));
    };
    if HELP_FLAGS.contains(&name.as_str()) {
        print!("{}", overview());
        return Ok(());
    }
    let command = COMMANDS
        .iter()
        .find(|command| command.name() == name)
        .ok_or_else(|| BenchError::new(format!("unknown benchmark {name:?}\n{}", overview())))?;
    command.run(rest)
}

/// `runnel bench --help`: the subcommands, one line each.
pub fn overview() -> String {
    let mut out = String::from("usage: runnel bench SUBCOMMAND [flags] (how each number is measured: bench/README.md)\n\nsubcommands:\n");
    for command in COMMANDS {
        out += &format!("  {:<14}{}\n", command.name(), command.summary());
    }
    out += "\n`runnel bench SUBCOMMAND --help` lists its flags.\n";
    out
}

// ---- Values --------------------------------------------------------------------------------

fn number<T: std::str::FromStr>(text: &str) -> Result<T, BenchError> {
    text.parse().map_err(|_| BenchError::new(format!("{text:?}: not a number")))
}

fn seconds(text: &str) -> Result<Duration, BenchError> {
    let seconds: f64 = number(text)?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(BenchError::new(format!("{text}: use 0 < SECS <= 3600")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `--against nats`, the only baseline there is.
fn against(text: &str) -> Result<(), BenchError> {
    match text {
        "nats" => Ok(()),
        other => Err(BenchError::new(format!("{other:?}: only nats is supported"))),
    }
}

/// `runnel bench fanout --against nats|zenoh|nats,zenoh`: which baselines run, as
/// (NATS, Zenoh). Zenoh needs the cargo feature `zenoh`; without it the error says how to
/// build with it.
fn fanout_against(text: &str) -> Result<(bool, bool), BenchError> {
    let (mut nats, mut zenoh) = (false, false);
    for name in text.split(',') {
        match name {
            "nats" => nats = true,
            "zenoh" => zenoh = true,
            other => return Err(BenchError::new(format!("{other:?}: use nats, zenoh or nats,zenoh"))),
        }
    }
    if zenoh {
        crate::fanout::zenoh_available()?;
    }
    Ok((nats, zenoh))
}

fn show_seconds(duration: Duration) -> String {
    format!("{}", duration.as_secs_f64())
}

fn show_against(against_nats: bool) -> String {
    if against_nats { "nats" } else { "none: Runnel only" }.to_string()
}

fn show_fanout_against(options: &FanoutOptions) -> String {
    match (options.against_nats, options.against_zenoh) {
        (false, false) => show_against(false),
        (true, false) => "nats".to_string(),
        (false, true) => "zenoh".to_string(),
        (true, true) => "nats,zenoh".to_string(),
    }
}

/// `--churn 0,0.1`: one run per fraction.
fn churn_levels(text: &str) -> Result<Vec<f64>, BenchError> {
    text.split(',').map(number).collect()
}

fn path(text: &str) -> Result<Option<PathBuf>, BenchError> {
    Ok(Some(PathBuf::from(text)))
}

fn show_switch(on: bool) -> String {
    if on { "on" } else { "off" }.to_string()
}

// Help lines that mean the same for several subcommands.
const SIZE_HELP: &str = "payload length in bytes, at least 16";
const SEARCH_DURATION_HELP: &str = "time budget of the throughput search (an unpaced probe, then paced steps bisecting the rate)";
const SIGNATURES_HELP: &str = "how the Runnel publisher signs: one signature per message, or one per Merkle batch";
const LATENCY_DURATION_HELP: &str = "length of the paced latency phase after the search";
const LATENCY_RATE_HELP: &str = "publish rate of the latency phase (both publishers flush on the same schedule)";
const RUNNEL_BINARY_HELP: &str = "runnel binary to start nodes with, as `runnel node --config FILE`";
const NATS_SERVER_HELP: &str = "nats-server binary to start";
const THIS_EXECUTABLE: &str = "this executable";
const NATS_ON_PATH: &str = "nats-server on PATH, then in /usr/sbin";

// ---- The subcommands -----------------------------------------------------------------------

static FANOUT: Subcommand<FanoutOptions> = Subcommand {
    name: "fanout",
    summary: "one publisher -> one node -> N subscribers: throughput search, then latency (--against nats|zenoh: also NATS, Zenoh)",
    defaults: || FanoutOptions { against_nats: false, ..FanoutOptions::default() },
    run: |options| crate::fanout(options).map(|report| (report.to_json(), report.table())),
    flags: &[
        Flag {
            name: "--subscribers",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.subscribers = n)),
            help: "subscribers on the server",
            default: |o| o.subscribers.to_string(),
        },
        Flag {
            name: "--size",
            takes: Takes::Value("BYTES", |o, v| number(v).map(|n| o.payload_length = n)),
            help: SIZE_HELP,
            default: |o| o.payload_length.to_string(),
        },
        Flag {
            name: "--duration",
            takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.duration = d)),
            help: SEARCH_DURATION_HELP,
            default: |o| show_seconds(o.duration),
        },
        Flag {
            name: "--against",
            takes: Takes::Value("nats|zenoh|nats,zenoh", |o, v| {
                fanout_against(v).map(|(nats, zenoh)| {
                    o.against_nats = nats;
                    o.against_zenoh = zenoh;
                })
            }),
            help: "also run these baselines under the same workload: nats (a nats-server child), zenoh (peer sessions over loopback TCP, publisher's session routing; needs a build with `--features zenoh`)",
            default: show_fanout_against,
        },
        Flag {
            name: "--only-nats",
            takes: Takes::Switch(|o| {
                o.runnel = false;
                o.against_nats = true;
            }),
            help: "run the NATS baseline alone",
            default: |o| show_switch(!o.runnel),
        },
        Flag {
            name: "--signatures",
            takes: Takes::Value("single|batch", |o, v| v.parse().map(|mode| o.signatures = mode)),
            help: SIGNATURES_HELP,
            default: |o| o.signatures.name().to_string(),
        },
        Flag {
            name: "--latency-duration",
            takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.latency_duration = d)),
            help: LATENCY_DURATION_HELP,
            default: |o| show_seconds(o.latency_duration),
        },
        Flag {
            name: "--latency-rate",
            takes: Takes::Value("MSGS_PER_S", |o, v| number(v).map(|n| o.latency_rate_per_s = n)),
            help: LATENCY_RATE_HELP,
            default: |o| o.latency_rate_per_s.to_string(),
        },
        Flag {
            name: "--runnel-binary",
            takes: Takes::Value("PATH", |o, v| path(v).map(|p| o.runnel_binary = p)),
            help: RUNNEL_BINARY_HELP,
            default: |_| THIS_EXECUTABLE.to_string(),
        },
        Flag {
            name: "--nats-server",
            takes: Takes::Value("PATH", |o, v| path(v).map(|p| o.nats_server = p)),
            help: NATS_SERVER_HELP,
            default: |_| NATS_ON_PATH.to_string(),
        },
    ],
};

static RELAY_CHAIN: Subcommand<RelayChainOptions> = Subcommand {
    name: "relay-chain",
    summary: "publisher -> A -> B -> C -> subscriber (three node processes), as a fraction of the UDP ceiling",
    defaults: RelayChainOptions::default,
    run: |options| crate::relay_chain(options).map(|report| (report.to_json(), report.table())),
    flags: &[
        Flag {
            name: "--size",
            takes: Takes::Value("BYTES", |o, v| number(v).map(|n| o.payload_length = n)),
            help: SIZE_HELP,
            default: |o| o.payload_length.to_string(),
        },
        Flag {
            name: "--duration",
            takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.duration = d)),
            help: SEARCH_DURATION_HELP,
            default: |o| show_seconds(o.duration),
        },
        Flag {
            name: "--signatures",
            takes: Takes::Value("single|batch", |o, v| v.parse().map(|mode| o.signatures = mode)),
            help: SIGNATURES_HELP,
            default: |o| o.signatures.name().to_string(),
        },
        Flag {
            name: "--latency-duration",
            takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.latency_duration = d)),
            help: LATENCY_DURATION_HELP,
            default: |o| show_seconds(o.latency_duration),
        },
        Flag {
            name: "--latency-rate",
            takes: Takes::Value("MSGS_PER_S", |o, v| number(v).map(|n| o.latency_rate_per_s = n)),
            help: LATENCY_RATE_HELP,
            default: |o| o.latency_rate_per_s.to_string(),
        },
        Flag {
            name: "--runnel-binary",
            takes: Takes::Value("PATH", |o, v| path(v).map(|p| o.runnel_binary = p)),
            help: RUNNEL_BINARY_HELP,
            default: |_| THIS_EXECUTABLE.to_string(),
        },
    ],
};

static LATENCY: Subcommand<LatencyOptions> = Subcommand {
    name: "latency",
    summary: "one-hop latency, publisher -> one node -> one subscriber, flushing every message; sign/verify cost",
    defaults: LatencyOptions::default,
    run: |options| crate::latency(options).map(|report| (report.to_json(), report.table())),
    flags: &[
        Flag {
            name: "--size",
            takes: Takes::Value("BYTES", |o, v| number(v).map(|n| o.payload_length = n)),
            help: SIZE_HELP,
            default: |o| o.payload_length.to_string(),
        },
        Flag {
            name: "--rate",
            takes: Takes::Value("MSGS_PER_S", |o, v| number(v).map(|n| o.rate_per_s = n)),
            help: "paced publish rate, one flush per message",
            default: |o| o.rate_per_s.to_string(),
        },
        Flag {
            name: "--duration",
            takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.duration = d)),
            help: "length of the measured phase, after a short warm-up that is not sampled",
            default: |o| show_seconds(o.duration),
        },
        Flag {
            name: "--against",
            takes: Takes::Value("nats", |o, v| against(v).map(|()| o.against_nats = true)),
            help: "also measure NATS (a nats-server child), its client flushing every message",
            default: |o| show_against(o.against_nats),
        },
        Flag {
            name: "--signatures",
            takes: Takes::Value("single|batch", |o, v| v.parse().map(|mode| o.signatures = mode)),
            help: "how the Runnel publisher signs (batch with a flush per message signs batches of one)",
            default: |o| o.signatures.name().to_string(),
        },
        Flag {
            name: "--runnel-binary",
            takes: Takes::Value("PATH", |o, v| path(v).map(|p| o.runnel_binary = p)),
            help: RUNNEL_BINARY_HELP,
            default: |_| THIS_EXECUTABLE.to_string(),
        },
        Flag {
            name: "--nats-server",
            takes: Takes::Value("PATH", |o, v| path(v).map(|p| o.nats_server = p)),
            help: NATS_SERVER_HELP,
            default: |_| NATS_ON_PATH.to_string(),
        },
    ],
};

static UDP_CEILING: Subcommand<UdpCeilingOptions> = Subcommand {
    name: "udp-ceiling",
    summary: "a forwarder that only moves datagrams (GRO receive, GSO send): the most a relay could forward here",
    defaults: UdpCeilingOptions::default,
    run: |options| crate::udp_ceiling(options).map(|report| (report.to_json(), report.table())),
    flags: &[Flag {
        name: "--duration",
        takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.duration = d)),
        help: "measured window, after a 300 ms warm-up",
        default: |o| show_seconds(o.duration),
    }],
};

static XDP: Subcommand<XdpOptions> = Subcommand {
    name: "xdp",
    summary: "the XDP filter: ns per verdict, and delivery under a forged flood on a veth pair (needs root)",
    defaults: XdpOptions::default,
    run: |options| crate::xdp(options).map(|report| (report.to_json(), report.table())),
    flags: &[
        Flag {
            name: "--duration",
            takes: Takes::Value("SECS", |o, v| seconds(v).map(|d| o.duration = d)),
            help: "length of each veth phase (the legitimate publisher's sending time)",
            default: |o| show_seconds(o.duration),
        },
        Flag {
            name: "--flood-rate",
            takes: Takes::Value("DATAGRAMS_PER_S|max", |o, v| FloodRate::parse(v).map(|rate| o.flood_rate = rate)),
            help: "forged datagrams per second in the flood phases, or max",
            default: |o| o.flood_rate.to_string(),
        },
        Flag {
            name: "--legit-rate",
            takes: Takes::Value("MSGS_PER_S", |o, v| number(v).map(|n| o.legit_rate_per_s = n)),
            help: "the legitimate publisher's paced rate",
            default: |o| o.legit_rate_per_s.to_string(),
        },
        Flag {
            name: "--repeat",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.repeat = n)),
            help: "runs per BPF_PROG_TEST_RUN call for the stateless verdicts",
            default: |o| o.repeat.to_string(),
        },
    ],
};

static CHAIN: Subcommand<ChainOptions> = Subcommand {
    name: "chain",
    summary: "permissions from the chain: their cost on the fast path, revoke-to-rejection time on anvil, settlement gas",
    defaults: ChainOptions::default,
    run: |options| crate::chain(options).map(|report| (report.to_json(), report.table())),
    flags: &[
        Flag {
            name: "--messages",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.messages = n)),
            help: "messages per fast-path round",
            default: |o| o.messages.to_string(),
        },
        Flag {
            name: "--rounds",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.rounds = n)),
            help: "fast-path rounds of each variant (public, restricted), alternating",
            default: |o| o.rounds.to_string(),
        },
        Flag {
            name: "--revokes",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.revokes = n)),
            help: "grant/revoke cycles timed on anvil",
            default: |o| o.revokes.to_string(),
        },
        Flag {
            name: "--chain-poll-ms",
            takes: Takes::Value("MS", |o, v| number(v).map(|n| o.chain_poll_ms = n)),
            help: "the node's registry poll interval ([control] chain_poll_ms)",
            default: |o| o.chain_poll_ms.to_string(),
        },
        Flag {
            name: "--tree-sizes",
            takes: Takes::Value("N,N,..", |o, v| {
                v.split(',').map(number).collect::<Result<Vec<usize>, _>>().map(|sizes| o.tree_sizes = sizes)
            }),
            help: "accounts in the settlement trees whose commit and withdrawal gas is measured",
            default: |o| o.tree_sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        },
        Flag {
            name: "--runnel-binary",
            takes: Takes::Value("PATH", |o, v| path(v).map(|p| o.runnel_binary = p)),
            help: RUNNEL_BINARY_HELP,
            default: |_| THIS_EXECUTABLE.to_string(),
        },
    ],
};

static SIM: Subcommand<SimOptions> = Subcommand {
    name: "sim",
    summary: "seeded simulation of one stream part at N nodes: real overlay and relay cores, simulated latency, loss, churn",
    defaults: SimOptions::default,
    run: |options| crate::sim(options).map(|reports| (reports.iter().map(|r| r.to_json()).collect(), crate::sim::table(&reports))),
    flags: &[
        Flag {
            name: "--nodes",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.nodes = n)),
            help: "nodes at the start, all subscribed to the one stream part",
            default: |o| o.nodes.to_string(),
        },
        Flag {
            name: "--seed",
            takes: Takes::Value("S", |o, v| number(v).map(|n| o.seed = n)),
            help: "seed of every random choice; printed, and the same seed gives the same report",
            default: |_| "the clock (printed)".to_string(),
        },
        Flag {
            name: "--churn",
            takes: Takes::Value("FRACTION[,FRACTION..]", |o, v| churn_levels(v).map(|levels| o.churn = levels)),
            help: "per level, one run: that fraction of nodes killed during publishing, as many new ones started",
            default: |o| o.churn.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        },
        Flag {
            name: "--messages",
            takes: Takes::Value("N", |o, v| number(v).map(|n| o.messages = n)),
            help: "messages published (64 bytes, signed per message)",
            default: |o| o.messages.to_string(),
        },
        Flag {
            name: "--rate",
            takes: Takes::Value("MSGS_PER_S", |o, v| number(v).map(|n| o.rate_per_s = n)),
            help: "publish rate (the publishing window is messages / rate)",
            default: |o| o.rate_per_s.to_string(),
        },
        Flag {
            name: "--loss",
            takes: Takes::Value("PROBABILITY", |o, v| number(v).map(|n| o.loss = n)),
            help: "chance that one datagram between nodes is lost",
            default: |o| o.loss.to_string(),
        },
        Flag {
            name: "--propagation",
            takes: Takes::Value("plumtree|flood", |o, v| crate::sim::propagation(v).map(|mode| o.propagation = mode)),
            help: "how relays pass frames to neighbors: a Plumtree tree with IHaves to the other links, or flooding",
            default: |o| crate::sim::propagation_name(o.propagation).to_string(),
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SignatureMode;
    use runnel_core::link::Propagation;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    // Goal: a flag's table entry really sets its option, and every help line shows a default
    // rendered from the subcommand's defaults.
    #[test]
    fn flags_parse_into_options() {
        let (options, json) =
            LATENCY.parse(&args("--size 128 --rate 10000 --duration 1.5 --against nats --signatures batch --json")).unwrap();
        assert!(json);
        assert_eq!((options.payload_length, options.rate_per_s, options.duration), (128, 10_000, Duration::from_millis(1500)));
        assert!(options.against_nats);
        assert_eq!(options.signatures, SignatureMode::Batch);
        let (options, json) = FANOUT.parse(&args("--only-nats")).unwrap();
        assert!(!json && !options.runnel && options.against_nats);
        assert!(LATENCY.help().contains("--rate MSGS_PER_S") && LATENCY.help().contains("(default: 1000)"));
        assert!(FANOUT.help().contains("(default: none: Runnel only)"));
        let (options, _) = SIM.parse(&args("--propagation flood --churn 0,0.1")).unwrap();
        assert_eq!((options.propagation, options.churn), (Propagation::Flood, vec![0.0, 0.1]));
        assert!(SIM.help().contains("--propagation plumtree|flood") && SIM.help().contains("(default: plumtree)"));
    }

    // Goal: mistakes name the flag and what to do; an unknown flag points to --help.
    #[test]
    fn mistakes_are_explained() {
        let error = |command: &dyn Fn(&[String]) -> Result<(), BenchError>, text: &str| command(&args(text)).unwrap_err().0;
        let latency = |a: &[String]| LATENCY.parse(a).map(|_| ());
        assert!(error(&latency, "--bogus").contains("`runnel bench latency --help`"));
        assert!(error(&latency, "--rate").contains("--rate needs a value: --rate MSGS_PER_S"));
        assert!(error(&latency, "--rate fast").contains("--rate \"fast\": not a number"));
        assert!(error(&latency, "--duration 0").contains("--duration 0: use 0 < SECS <= 3600"));
        assert!(error(&latency, "--signatures many").contains("--signatures \"many\": use single or batch"));
        assert!(error(&latency, "--against kafka").contains("only nats"));
        assert!(error(&run, "nosuch").contains("unknown benchmark"));
        let fanout = |a: &[String]| FANOUT.parse(a).map(|_| ());
        assert!(error(&fanout, "--against kafka").contains("--against \"kafka\": use nats, zenoh or nats,zenoh"));
        assert!(error(&fanout, "--against nats,").contains("use nats, zenoh or nats,zenoh"));
        let sim = |a: &[String]| SIM.parse(a).map(|_| ());
        assert!(error(&sim, "--propagation gossip").contains("--propagation \"gossip\": use plumtree or flood"));
    }

    // Goal: `--against` takes nats, zenoh or both; without the `zenoh` feature asking for
    // Zenoh fails at once with the build command to use.
    #[test]
    fn fanout_against_lists() {
        let (options, _) = FANOUT.parse(&args("--against nats")).unwrap();
        assert!(options.runnel && options.against_nats && !options.against_zenoh);
        assert!(FANOUT.help().contains("--against nats|zenoh|nats,zenoh"));
        for text in ["--against nats,zenoh", "--against zenoh,nats"] {
            match (FANOUT.parse(&args(text)), cfg!(feature = "zenoh")) {
                (Ok((options, _)), true) => assert!(options.runnel && options.against_nats && options.against_zenoh),
                (Err(error), false) => {
                    assert!(error.0.contains("cargo build --release -p runnel --features zenoh"), "{error}");
                    assert!(error.0.contains("cargo build --release -p runnel-bench --features zenoh"), "{error}");
                }
                (outcome, built_with_zenoh) => panic!("{text} with zenoh built in: {built_with_zenoh}: {:?}", outcome.map(|_| ())),
            }
        }
        if cfg!(feature = "zenoh") {
            let (options, _) = FANOUT.parse(&args("--against zenoh")).unwrap();
            assert!(!options.against_nats && options.against_zenoh);
        }
    }
}
