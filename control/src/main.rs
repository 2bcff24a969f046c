//! # runnel
//!
//! The command line of a Runnel node: `runnel node` runs a dataplane from a config file,
//! `runnel control` the control process beside it (over the dataplane's `--ipc` socket),
//! `runnel dev` starts a whole local network with traffic and live numbers, `runnel pub` /
//! `runnel sub` publish and subscribe over a client link, `runnel keygen` makes keys, `runnel stream` creates streams and sets their permissions on
//! the chain, and
//! `runnel bench` runs the benchmark programs of `bench/`.

use clap::{Parser, Subcommand};

// First: its macro is used by the modules below.
#[macro_use]
mod log;
mod admin;
mod chain_watch;
mod control_cmd;
mod dev;
mod keygen;
mod node_cmd;
mod operator;
mod payout_cmd;
mod pubsub;
mod signals;
mod stream_cmd;
mod supervise;
mod traffic_reports;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "runnel", version, about = "Runnel: a line-rate node for a peer-to-peer network of signed real-time data streams")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (dataplane shards) from a TOML config until Ctrl-C.
    Node(node_cmd::NodeArgs),
    /// Run the control process beside a dataplane (`runnel node --ipc PATH`): drives it over
    /// the socket and serves /status and /metrics.
    Control(control_cmd::ControlArgs),
    /// Start a local network on loopback with a publisher and subscribers; show live numbers.
    Dev(dev::DevArgs),
    /// Publish messages to a stream part through a node (stdin lines, or generated).
    Pub(pubsub::PubArgs),
    /// Subscribe to a stream part through a node and print what arrives.
    Sub(pubsub::SubArgs),
    /// Benchmarks against NATS, raw UDP and a relay chain (see bench/README.md):
    /// `runnel bench --help` lists them, `runnel bench NAME --help` their flags.
    // Help is runnel_bench's own (one table per subcommand), so clap passes -h/--help on.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Make a publisher key (Ethereum account) in a new 0600 file or keystore (--out FILE;
    /// prints only its address), or with --link a 32-byte link key.
    Keygen(keygen::KeygenArgs),
    /// Streams on the chain's StreamRegistry: create, grant, revoke, info.
    Stream(stream_cmd::StreamArgs),
    /// Run the settlement operator: take the nodes' signed traffic reports, commit each
    /// epoch's earnings root, serve the proofs (docs/settlement.md).
    Operator(operator::OperatorArgs),
    /// A node's settlement earnings: earned, withdrawn, withdrawable now, frozen until when
    /// (proofs from the operator, checked against the contract).
    Earnings(payout_cmd::PayoutArgs),
    /// Withdraw a node's earnings from the settlement contract with the operator's proof.
    Withdraw(payout_cmd::WithdrawArgs),
}

fn main() {
    let cli = Cli::parse();
    signals::install();
    let result = match cli.command {
        Command::Node(args) => node_cmd::run(args),
        Command::Control(args) => control_cmd::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Pub(args) => pubsub::run_pub(args),
        Command::Sub(args) => pubsub::run_sub(args),
        Command::Bench { args } => runnel_bench::cli::run(&args).map_err(|e| e.to_string()),
        Command::Keygen(args) => keygen::run(args),
        Command::Stream(args) => stream_cmd::run(args),
        Command::Operator(args) => operator::run(args),
        Command::Earnings(args) => payout_cmd::run_earnings(args),
        Command::Withdraw(args) => payout_cmd::run_withdraw(args),
    };
    if let Err(error) = result {
        logln!("runnel: {error}");
        std::process::exit(1);
    }
}
