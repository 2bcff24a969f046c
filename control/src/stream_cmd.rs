//! `runnel stream create|grant|revoke|info`: the on-chain side of streams, against the
//! StreamRegistry contract the network follows. Writes are transactions from the account of
//! `--key-file` (or $RUNNEL_PRIVATE_KEY); each prints what it did, its transaction and its
//! block, and waits for the receipt (a revert is an error that says why).

use alloy::primitives::Address;
use runnel_chain::permissions::Follower;
use runnel_chain::registry::{Access, Registry};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_keystore::{load_secret, Limits, PasswordSource, Secret};
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    #[command(subcommand)]
    command: StreamCommand,
    /// The chain's JSON-RPC endpoint.
    #[arg(long, global = true, env = "RUNNEL_CHAIN_RPC", value_name = "URL", default_value = "http://127.0.0.1:8545")]
    chain_rpc: String,
    /// The StreamRegistry contract's address (`runnel dev` prints the one it deployed).
    #[arg(long, global = true, env = "RUNNEL_REGISTRY", value_name = "ADDRESS")]
    registry: Option<String>,
    /// The account that sends transactions: a 0600 key file or keystore (`runnel keygen
    /// --out`). Default: the hex key in $RUNNEL_PRIVATE_KEY.
    #[arg(long, global = true, env = "RUNNEL_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Keystore password file (or $RUNNEL_KEYSTORE_PASSWORD).
    #[arg(long, global = true, env = "RUNNEL_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Seconds to wait for a transaction's receipt before giving up.
    #[arg(long, global = true, default_value_t = 60)]
    tx_timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
enum StreamCommand {
    /// Create the stream 0x<your account>/<PATH> (you get every permission on it).
    Create {
        /// The stream's path, e.g. /sensors/room1.
        path: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// Give an account (or `public`: everyone) publish or subscribe permission.
    Grant {
        /// 0x<owner>/<path>
        stream: String,
        /// 0x + 40 hex digits, or `public`.
        account: String,
        /// publish or subscribe
        permission: String,
        /// Until this Unix time (seconds); default: no expiry.
        #[arg(long, value_name = "UNIX_SECONDS")]
        until: Option<u64>,
    },
    /// Take an account's (or the public) publish or subscribe permission away.
    Revoke { stream: String, account: String, permission: String },
    /// Show a stream's metadata and who may publish and subscribe (from the registry's events).
    Info {
        stream: String,
        /// The block to read events from (the registry's deployment block).
        #[arg(long, default_value_t = 0)]
        from_block: u64,
        #[arg(long)]
        json: bool,
    },
}

fn account(text: &str) -> Result<Option<Address>, String> {
    if text == "public" {
        return Ok(None);
    }
    text.parse::<Address>().map(Some).map_err(|e| format!("account {text:?}: {e} (write 0x + 40 hex digits, or public)"))
}

fn access(text: &str) -> Result<Access, String> {
    text.parse().map_err(|e: runnel_chain::ChainError| e.to_string())
}

impl StreamArgs {
    fn registry_address(&self) -> Result<Address, String> {
        let text = self.registry.as_deref().ok_or("--registry ADDRESS (or $RUNNEL_REGISTRY) is required")?;
        text.parse().map_err(|e| format!("--registry {text:?}: {e}"))
    }

    fn signer(&self) -> Result<Secret, String> {
        load_signer(self.key_file.as_deref(), self.password_file.as_deref())
    }

    fn chain(&self, write: bool) -> Result<Chain, String> {
        let config = ChainConfig { tx_timeout: std::time::Duration::from_secs(self.tx_timeout), ..ChainConfig::default() };
        let secret = if write { Some(self.signer()?) } else { None };
        Chain::connect(&self.chain_rpc, secret.as_ref().map(Secret::expose), config)
            .map_err(|e| format!("--chain-rpc {}: {e}", self.chain_rpc))
    }
}

/// The account that sends transactions: `key_file` (a 0600 key file or keystore), else the
/// hex key in $RUNNEL_PRIVATE_KEY.
pub fn load_signer(key_file: Option<&std::path::Path>, password_file: Option<&std::path::Path>) -> Result<Secret, String> {
    if let Some(path) = key_file {
        let loaded =
            load_secret(path, PasswordSource::file_or_env(password_file), &Limits::DEFAULT).map_err(|e| format!("--key-file: {e}"))?;
        return Ok(loaded.secret);
    }
    let text = std::env::var("RUNNEL_PRIVATE_KEY")
        .map_err(|_| "a write needs an account: pass --key-file FILE or set RUNNEL_PRIVATE_KEY".to_string())?;
    Secret::from_hex(text.trim()).ok_or_else(|| "RUNNEL_PRIVATE_KEY: not 64 hex digits".to_string())
}

pub fn run(args: StreamArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(execute(&args))
}

async fn execute(args: &StreamArgs) -> Result<(), String> {
    let registry_address = args.registry_address()?;
    let write = !matches!(args.command, StreamCommand::Info { .. });
    let chain = args.chain(write)?;
    let registry = Registry::new(chain.clone(), registry_address);
    let done = |what: String, receipt: alloy::rpc::types::TransactionReceipt| {
        println!("{what} (transaction {:#x}, block {})", receipt.transaction_hash, receipt.block_number.unwrap_or_default());
    };
    match &args.command {
        StreamCommand::Create { path, partitions } => {
            let (id, receipt) = registry.create_stream(path, *partitions).await.map_err(|e| e.to_string())?;
            done(format!("created {id} with {partitions} partitions"), receipt);
        }
        StreamCommand::Grant { stream, account: who, permission, until } => {
            let (user, permission) = (account(who)?, access(permission)?);
            let receipt = registry.grant(stream, user, permission, *until).await.map_err(|e| e.to_string())?;
            let until = until.map_or("no expiry".to_string(), |t| format!("until {t}"));
            done(format!("granted {permission:?} on {stream} to {who} ({until})"), receipt);
        }
        StreamCommand::Revoke { stream, account: who, permission } => {
            let (user, permission) = (account(who)?, access(permission)?);
            let receipt = registry.revoke(stream, user, permission).await.map_err(|e| e.to_string())?;
            done(format!("revoked {permission:?} on {stream} from {who}"), receipt);
        }
        StreamCommand::Info { stream, from_block, json } => {
            let Some(metadata) = registry.metadata(stream).await.map_err(|e| e.to_string())? else {
                return Err(format!("no stream {stream} in the registry at {registry_address:#x}"));
            };
            let mut follower = Follower::new(chain, registry_address, *from_block);
            let report = follower.poll().await.map_err(|e| e.to_string())?;
            let entry = follower.book().stream(stream).cloned().unwrap_or_default();
            let never = |t: u64| if t == u64::MAX { json!("never") } else { json!(t) };
            let users: Vec<_> = entry
                .users
                .iter()
                .filter(|(_, grant)| grant.publish_until > 0 || grant.subscribe_until > 0)
                .map(|(user, grant)| {
                    let who = if user.is_zero() { "public".to_string() } else { format!("{user:#x}") };
                    json!({ "account": who, "publish_until": never(grant.publish_until), "subscribe_until": never(grant.subscribe_until) })
                })
                .collect();
            let info = json!({
                "stream": stream,
                "metadata": metadata,
                "partitions": entry.partitions,
                "permissions": users,
                "read_to_block": report.head,
            });
            if *json {
                println!("{info}");
            } else {
                println!("{stream}: {} partitions, metadata {metadata}", entry.partitions);
                for user in &users {
                    println!(
                        "  {:44} publish until {:>12}  subscribe until {:>12}",
                        user["account"].as_str().unwrap_or_default(),
                        user["publish_until"].to_string(),
                        user["subscribe_until"].to_string()
                    );
                }
            }
        }
    }
    Ok(())
}
