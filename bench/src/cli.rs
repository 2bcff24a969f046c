//! `runnel bench …`: argument parsing for the benchmark programs.
//!
//! ```text
//! runnel bench fanout --subscribers N --size BYTES --duration SECS [--against nats]
//!              [--signatures single|batch] [--only-nats] [--latency-duration SECS]
//!              [--latency-rate MSGS_PER_S] [--runnel-binary PATH] [--nats-server PATH] [--json]
//! runnel bench relay-chain [--size BYTES] [--duration SECS] [--signatures single|batch]
//!              [--latency-duration SECS] [--latency-rate MSGS_PER_S] [--runnel-binary PATH] [--json]
//! runnel bench udp-ceiling [--duration SECS] [--json]
//! runnel bench xdp [--duration SECS] [--flood-rate DATAGRAMS_PER_S|max] [--legit-rate MSGS_PER_S]
//!              [--repeat N] [--json]
//! ```

/// What `runnel bench` accepts.
pub const USAGE: &str = "usage: runnel bench fanout|relay-chain|udp-ceiling|xdp [flags] (see bench/README.md)";

use crate::{BenchError, FanoutOptions, FloodRate, RelayChainOptions, UdpCeilingOptions, XdpOptions};
use std::path::PathBuf;
use std::time::Duration;

fn value<'a>(args: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String, BenchError> {
    args.next().ok_or_else(|| BenchError::new(format!("{flag} needs a value")))
}

fn number<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, BenchError> {
    text.parse().map_err(|_| BenchError::new(format!("{flag} {text:?}: not a number")))
}

fn seconds(text: &str, flag: &str) -> Result<Duration, BenchError> {
    let seconds: f64 = number(text, flag)?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(BenchError::new(format!("{flag} {text}: use 0 < SECS <= 3600")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs `runnel bench <args>`.
pub fn run(args: &[String]) -> Result<(), BenchError> {
    let usage = USAGE;
    let (command, rest) = args.split_first().ok_or_else(|| BenchError::new(usage))?;
    let mut json = false;
    let mut iter = rest.iter();
    match command.as_str() {
        "fanout" => {
            let mut options = FanoutOptions { against_nats: false, ..Default::default() };
            while let Some(flag) = iter.next() {
                match flag.as_str() {
                    "--subscribers" => options.subscribers = number(value(&mut iter, flag)?, flag)?,
                    "--size" => options.payload_length = number(value(&mut iter, flag)?, flag)?,
                    "--duration" => options.duration = seconds(value(&mut iter, flag)?, flag)?,
                    "--latency-duration" => options.latency_duration = seconds(value(&mut iter, flag)?, flag)?,
                    "--against" => match value(&mut iter, flag)?.as_str() {
                        "nats" => options.against_nats = true,
                        other => return Err(BenchError::new(format!("--against {other:?}: only nats is supported"))),
                    },
                    "--signatures" => options.signatures = value(&mut iter, flag)?.parse()?,
                    "--latency-rate" => options.latency_rate_per_s = number(value(&mut iter, flag)?, flag)?,
                    "--only-nats" => {
                        options.runnel = false;
                        options.against_nats = true;
                    }
                    "--runnel-binary" => options.runnel_binary = Some(PathBuf::from(value(&mut iter, flag)?)),
                    "--nats-server" => options.nats_server = Some(PathBuf::from(value(&mut iter, flag)?)),
                    "--json" => json = true,
                    other => return Err(BenchError::new(format!("unknown flag {other}; {usage}"))),
                }
            }
            let report = crate::fanout(options)?;
            if json {
                println!("{}", report.to_json());
            } else {
                report.print_table();
            }
        }
        "relay-chain" => {
            let mut options = RelayChainOptions::default();
            while let Some(flag) = iter.next() {
                match flag.as_str() {
                    "--size" => options.payload_length = number(value(&mut iter, flag)?, flag)?,
                    "--duration" => options.duration = seconds(value(&mut iter, flag)?, flag)?,
                    "--latency-duration" => options.latency_duration = seconds(value(&mut iter, flag)?, flag)?,
                    "--signatures" => options.signatures = value(&mut iter, flag)?.parse()?,
                    "--latency-rate" => options.latency_rate_per_s = number(value(&mut iter, flag)?, flag)?,
                    "--runnel-binary" => options.runnel_binary = Some(PathBuf::from(value(&mut iter, flag)?)),
                    "--json" => json = true,
                    other => return Err(BenchError::new(format!("unknown flag {other}; {usage}"))),
                }
            }
            let report = crate::relay_chain(options)?;
            if json {
                println!("{}", report.to_json());
            } else {
                report.print_table();
            }
        }
        "udp-ceiling" => {
            let mut options = UdpCeilingOptions::default();
            while let Some(flag) = iter.next() {
                match flag.as_str() {
                    "--duration" => options.duration = seconds(value(&mut iter, flag)?, flag)?,
                    "--json" => json = true,
                    other => return Err(BenchError::new(format!("unknown flag {other}; {usage}"))),
                }
            }
            let report = crate::udp_ceiling(options)?;
            if json {
                println!("{}", report.to_json());
            } else {
                report.print_table();
            }
        }
        "xdp" => {
            let mut options = XdpOptions::default();
            while let Some(flag) = iter.next() {
                match flag.as_str() {
                    "--duration" => options.duration = seconds(value(&mut iter, flag)?, flag)?,
                    "--flood-rate" => options.flood_rate = FloodRate::parse(value(&mut iter, flag)?)?,
                    "--legit-rate" => options.legit_rate_per_s = number(value(&mut iter, flag)?, flag)?,
                    "--repeat" => options.repeat = number(value(&mut iter, flag)?, flag)?,
                    "--json" => json = true,
                    other => return Err(BenchError::new(format!("unknown flag {other}; {usage}"))),
                }
            }
            let report = crate::xdp(options)?;
            if json {
                println!("{}", report.to_json());
            } else {
                report.print_table();
            }
        }
        other => return Err(BenchError::new(format!("unknown benchmark {other:?}; {usage}"))),
    }
    Ok(())
}
