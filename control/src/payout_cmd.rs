//! `runnel earnings` and `runnel withdraw`: a node's side of settlement (docs/settlement.md).
//! Both fetch the account's proofs from the operator (`runnel operator`, `GET
//! /earnings/<account>`) and trust none of them: each is checked against the root the
//! contract holds for its epoch before it is shown or used.

use crate::operator::format_data;
use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::transports::http::reqwest;
use runnel_chain::merkle;
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::settlement::Settlement;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PayoutArgs {
    /// The settlement operator's base URL (`runnel operator --listen`).
    #[arg(long, env = "RUNNEL_SETTLEMENT_OPERATOR", value_name = "URL")]
    operator: String,
    /// The chain's JSON-RPC endpoint.
    #[arg(long, env = "RUNNEL_CHAIN_RPC", value_name = "URL", default_value = "http://127.0.0.1:8545")]
    chain_rpc: String,
    /// The RunnelSettlement contract.
    #[arg(long, env = "RUNNEL_SETTLEMENT", value_name = "ADDRESS")]
    settlement: String,
    /// Whose earnings (default: the --key-file account).
    #[arg(long, value_name = "ADDRESS")]
    account: Option<String>,
    /// The key that sends the withdrawal and pays its gas (0600 file or keystore; default:
    /// $RUNNEL_PRIVATE_KEY). The DATA goes to --account either way.
    #[arg(long, env = "RUNNEL_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[arg(long, env = "RUNNEL_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Seconds to wait for a transaction's receipt.
    #[arg(long, default_value_t = 60)]
    tx_timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct WithdrawArgs {
    #[command(flatten)]
    payout: PayoutArgs,
    /// Withdraw against this epoch's root (default: the newest whose freeze is over).
    #[arg(long)]
    epoch: Option<u64>,
}

/// One of the account's committed earnings, checked against the chain.
#[derive(Clone, Debug)]
struct Proven {
    epoch: u64,
    cumulative: U256,
    proof: Vec<B256>,
    /// When withdrawals against it open (block time, Unix seconds).
    open_at: u64,
}

/// The account's state: its checked proofs (newest first), what it was paid, the chain's time.
struct Standing {
    account: Address,
    proven: Vec<Proven>,
    withdrawn: U256,
    now: u64,
    balance: U256,
}

impl Standing {
    fn earned(&self) -> U256 {
        self.proven.first().map_or(U256::ZERO, |p| p.cumulative)
    }

    /// The newest proof withdrawals are open for.
    fn open(&self) -> Option<&Proven> {
        self.proven.iter().find(|p| p.open_at <= self.now)
    }

    fn withdrawable(&self) -> U256 {
        self.open().map_or(U256::ZERO, |p| p.cumulative.saturating_sub(self.withdrawn))
    }

    fn json(&self) -> Value {
        let frozen = self.earned().saturating_sub(self.withdrawn.max(self.open().map_or(U256::ZERO, |p| p.cumulative)));
        json!({
            "account": format!("{:#x}", self.account),
            "earned_wei": self.earned().to_string(),
            "withdrawn_wei": self.withdrawn.to_string(),
            "withdrawable_wei": self.withdrawable().to_string(),
            "withdrawable_epoch": self.open().map(|p| p.epoch),
            "frozen_wei": frozen.to_string(),
            "frozen_until": self.proven.first().filter(|p| p.open_at > self.now).map(|p| p.open_at),
            "balance_wei": self.balance.to_string(),
            "chain_time": self.now,
            "epochs": self.proven.iter().map(|p| json!({ "epoch": p.epoch, "cumulative_wei": p.cumulative.to_string(), "open_at": p.open_at })).collect::<Vec<_>>(),
        })
    }
}

impl PayoutArgs {
    fn connect(&self, write: bool) -> Result<(Settlement, Option<Address>), String> {
        let config = ChainConfig { tx_timeout: Duration::from_secs(self.tx_timeout), ..ChainConfig::default() };
        let secret = if write || self.key_file.is_some() {
            Some(crate::stream_cmd::load_signer(self.key_file.as_deref(), self.password_file.as_deref())?)
        } else {
            None
        };
        let chain = Chain::connect(&self.chain_rpc, secret.as_ref().map(|s| s.expose()), config)
            .map_err(|e| format!("--chain-rpc {}: {e}", self.chain_rpc))?;
        let sender = chain.sender().ok();
        let address: Address = self.settlement.parse().map_err(|e| format!("--settlement {:?}: {e}", self.settlement))?;
        Ok((Settlement::new(chain, address), sender))
    }

    fn account(&self, sender: Option<Address>) -> Result<Address, String> {
        match &self.account {
            Some(text) => text.parse().map_err(|e| format!("--account {text:?}: {e}")),
            None => sender.ok_or_else(|| "whose earnings? pass --account ADDRESS or --key-file FILE".to_string()),
        }
    }
}

/// Fetches the account's proofs from the operator and keeps those that match the chain.
async fn standing(args: &PayoutArgs, settlement: &Settlement, account: Address) -> Result<Standing, String> {
    let url = format!("{}/earnings/{account:#x}", args.operator.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let response = client.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: the operator answered {}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| format!("{url}: not JSON: {e}"))?;
    let epochs = body["epochs"].as_array().ok_or_else(|| format!("{url}: no epochs list in {body}"))?;
    let freeze = settlement.freeze_period_s().await.map_err(|e| e.to_string())?;
    let mut proven = Vec::new();
    for entry in epochs {
        let parsed = (|| -> Option<(u64, U256, Vec<B256>)> {
            let epoch = entry["epoch"].as_u64()?;
            let cumulative = U256::from_str_radix(entry["cumulative"].as_str()?, 10).ok()?;
            let proof = entry["proof"].as_array()?.iter().map(|p| p.as_str()?.parse().ok()).collect::<Option<Vec<B256>>>()?;
            Some((epoch, cumulative, proof))
        })();
        let Some((epoch, cumulative, proof)) = parsed else {
            return Err(format!("{url}: a malformed entry {entry}"));
        };
        let Some(commit) = settlement.commit_info(epoch).await.map_err(|e| e.to_string())? else {
            logln!("runnel: the operator serves epoch {epoch}, which the contract has no commit for: ignored");
            continue;
        };
        if !merkle::verify(commit.root, merkle::leaf(account, cumulative), &proof) {
            logln!("runnel: the operator's proof for epoch {epoch} does not match the contract's root: ignored");
            continue;
        }
        proven.push(Proven { epoch, cumulative, proof, open_at: commit.committed_at.saturating_add(freeze) });
    }
    proven.sort_by_key(|p| std::cmp::Reverse(p.epoch));
    let withdrawn = settlement.withdrawn(account).await.map_err(|e| e.to_string())?;
    let balance = settlement.token_balance(account).await.map_err(|e| e.to_string())?;
    let block = settlement
        .chain()
        .provider()
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await
        .map_err(|e| settlement.chain().rpc_error("eth_getBlockByNumber", e).to_string())?
        .ok_or("the chain has no latest block")?;
    Ok(Standing { account, proven, withdrawn, now: block.header.timestamp, balance })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))
}

pub fn run_earnings(args: PayoutArgs) -> Result<(), String> {
    runtime()?.block_on(async {
        let (settlement, sender) = args.connect(false)?;
        let standing = standing(&args, &settlement, args.account(sender)?).await?;
        if args.json {
            println!("{}", standing.json());
            return Ok(());
        }
        println!(
            "{:#x}: earned {} DATA, withdrawn {} DATA",
            standing.account,
            format_data(standing.earned()),
            format_data(standing.withdrawn)
        );
        match standing.open() {
            Some(open) => println!("  withdrawable now: {} DATA (epoch {})", format_data(standing.withdrawable()), open.epoch),
            None => println!("  nothing withdrawable yet"),
        }
        if let Some(newest) = standing.proven.first().filter(|p| p.open_at > standing.now) {
            println!(
                "  epoch {} opens for withdrawal at Unix time {} ({} s from now)",
                newest.epoch,
                newest.open_at,
                newest.open_at - standing.now
            );
        }
        Ok(())
    })
}

pub fn run_withdraw(args: WithdrawArgs) -> Result<(), String> {
    let payout = &args.payout;
    runtime()?.block_on(async {
        let (settlement, sender) = payout.connect(true)?;
        let account = payout.account(sender)?;
        let standing = standing(payout, &settlement, account).await?;
        let chosen = match args.epoch {
            Some(epoch) => standing
                .proven
                .iter()
                .find(|p| p.epoch == epoch)
                .ok_or_else(|| format!("the operator has no proof for {account:#x} in epoch {epoch} that matches the contract"))?,
            None => standing.open().ok_or_else(|| match standing.proven.first() {
                Some(newest) => format!(
                    "nothing to withdraw yet: epoch {} opens at Unix time {} (chain time {})",
                    newest.epoch, newest.open_at, standing.now
                ),
                None => format!("{account:#x} has no committed earnings"),
            })?,
        };
        let owed = chosen.cumulative.saturating_sub(standing.withdrawn);
        let receipt = settlement.withdraw(chosen.epoch, account, chosen.cumulative, &chosen.proof).await.map_err(|e| e.to_string())?;
        let balance = settlement.token_balance(account).await.map_err(|e| e.to_string())?;
        if payout.json {
            println!(
                "{}",
                json!({
                    "account": format!("{account:#x}"),
                    "epoch": chosen.epoch,
                    "paid_wei": owed.to_string(),
                    "balance_wei": balance.to_string(),
                    "transaction": format!("{:#x}", receipt.transaction_hash),
                    "gas_used": receipt.gas_used,
                })
            );
        } else {
            println!(
                "paid {} DATA to {account:#x} (epoch {}, transaction {:#x}, block {}); its balance is now {} DATA",
                format_data(owed),
                chosen.epoch,
                receipt.transaction_hash,
                receipt.block_number.unwrap_or_default(),
                format_data(balance)
            );
        }
        Ok(())
    })
}
