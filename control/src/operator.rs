//! `runnel operator`: the settlement operator (docs/settlement.md), a configured role.
//!
//! Nodes POST their signed traffic reports to `/reports` (`[control] settlement_operator`).
//! The [`Collector`] takes them as they arrive; once an epoch's collection window closes,
//! the operator settles it with `min(--budget-per-epoch, funded − earned)` DATA, writes the
//! cumulative earnings tree to `--state` and commits its root to the settlement contract.
//! Nodes (or anyone for them) fetch their proofs from `/earnings/<account>` and withdraw
//! (`runnel earnings`, `runnel withdraw`).
//!
//! **State.** One file per settled epoch, `epoch-<N>.json` (its tree), written before the
//! commit is sent. At start the operator reads the contract's latest committed epoch and
//! resumes from its tree (refusing to start if the file is missing or its root differs from
//! the chain's); a newer settled tree that was never committed is committed first. The
//! newest [`TREES_KEPT`] trees are kept, so proofs of older roots stay available while the
//! newest is still frozen.
//!
//! **Failures.** An RPC failure at settle time leaves the epoch collecting (it settles on a
//! later tick); a failed commit is retried; a newer settled tree replaces an uncommitted one
//! (it is cumulative, so nothing is lost but a commit).

use crate::admin::{self, Method, Refusal, Response};
use alloy::primitives::{Address, B256, U256};
use runnel_chain::accounting::{Operator, Tolerance};
use runnel_chain::collector::Collector;
use runnel_chain::merkle::EarningsTree;
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::settlement::Settlement;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Settled trees kept in `--state` (and served).
pub const TREES_KEPT: usize = 32;
/// How often the operator looks at its clock and its pending commit.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// HTTP address nodes POST reports to and fetch proofs from.
    #[arg(long, env = "RUNNEL_OPERATOR_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// The chain's JSON-RPC endpoint.
    #[arg(long, env = "RUNNEL_CHAIN_RPC", value_name = "URL", default_value = "http://127.0.0.1:8545")]
    pub chain_rpc: String,
    /// The RunnelSettlement contract (`runnel dev` prints the one it deployed).
    #[arg(long, env = "RUNNEL_SETTLEMENT", value_name = "ADDRESS")]
    pub settlement: String,
    /// The operator account's key (0600 file or keystore); it must be the contract's operator.
    #[arg(long, env = "RUNNEL_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[arg(long, env = "RUNNEL_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Where settled trees are kept (created 0700).
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// Seconds per epoch: the nodes' `settlement_epoch_s`.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub epoch_s: u64,
    /// Seconds after an epoch's end its reports are still taken.
    #[arg(long, default_value_t = 10)]
    pub collect_s: u64,
    /// DATA paid out per epoch (decimal, 18 decimals), at most what is funded and unearned.
    #[arg(long, value_name = "DATA")]
    pub budget_per_epoch: String,
    /// Most reports (nodes) per epoch.
    #[arg(long, default_value_t = 1024)]
    pub reports_max: usize,
    /// A receipt may exceed its sender's figures by this per mille (plus the slacks below)
    /// and still be credited, at the sender's figures (epoch-boundary skew).
    #[arg(long, default_value_t = 10)]
    pub tolerance_permille: u32,
    #[arg(long, default_value_t = 64 * 1024)]
    pub tolerance_bytes: u64,
    #[arg(long, default_value_t = 64)]
    pub tolerance_messages: u64,
    /// Seconds to wait for a commit's receipt.
    #[arg(long, default_value_t = 60)]
    pub tx_timeout: u64,
}

/// A settled epoch's tree, as stored and served.
#[derive(Clone, Debug)]
struct Settled {
    epoch: u64,
    tree: EarningsTree,
    /// The block time of its commit; `None` until committed.
    committed_at: Option<u64>,
}

/// What the server thread and the settling loop share.
#[derive(Debug)]
struct Shared {
    collector: Collector,
    /// Settled trees by epoch, newest last, at most [`TREES_KEPT`].
    trees: BTreeMap<u64, Settled>,
    commits: u64,
    commit_errors: u64,
    last_error: Option<String>,
    total_funded: U256,
}

/// `"1.5"` DATA → wei.
pub fn parse_data(text: &str) -> Result<U256, String> {
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && fraction.is_empty()
        || fraction.len() > 18
        || !(whole.chars().chain(fraction.chars()).all(|c| c.is_ascii_digit()))
    {
        return Err(format!("{text:?} is not an amount of DATA (digits, at most 18 decimals)"));
    }
    let padded = format!("{whole}{fraction:0<18}");
    U256::from_str_radix(padded.trim_start_matches('0').max("0"), 10).map_err(|e| format!("{text:?}: {e}"))
}

/// Wei → `"1.5"` DATA.
pub fn format_data(wei: U256) -> String {
    let digits = format!("{wei:0>19}");
    let (whole, fraction) = digits.split_at(digits.len() - 18);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        whole.to_string()
    } else {
        format!("{whole}.{fraction}")
    }
}

fn tree_json(settled: &Settled) -> Value {
    json!({
        "epoch": settled.epoch,
        "root": format!("{:#x}", settled.tree.root()),
        "total": settled.tree.total().to_string(),
        "entries": settled.tree.entries().iter().map(|(a, v)| json!([format!("{a:#x}"), v.to_string()])).collect::<Vec<_>>(),
    })
}

fn tree_from_json(value: &Value) -> Result<(u64, EarningsTree), String> {
    let epoch = value["epoch"].as_u64().ok_or("no epoch")?;
    let entries = value["entries"].as_array().ok_or("no entries")?;
    let mut parsed = Vec::with_capacity(entries.len());
    for entry in entries {
        let account: Address = entry[0].as_str().ok_or("an entry without an account")?.parse().map_err(|e| format!("{e}"))?;
        let amount = U256::from_str_radix(entry[1].as_str().ok_or("an entry without an amount")?, 10).map_err(|e| format!("{e}"))?;
        parsed.push((account, amount));
    }
    let tree = EarningsTree::new(parsed).map_err(|e| e.to_string())?;
    let root: B256 = value["root"].as_str().ok_or("no root")?.parse().map_err(|e| format!("{e}"))?;
    if tree.root() != root {
        return Err(format!("its entries give root {:#x}, not the {root:#x} it names", tree.root()));
    }
    Ok((epoch, tree))
}

fn tree_path(state: &Path, epoch: u64) -> PathBuf {
    state.join(format!("epoch-{epoch}.json"))
}

/// Writes a settled tree: a temporary file, then a rename (a crash leaves the old or the new).
fn store(state: &Path, settled: &Settled) -> Result<(), String> {
    let path = tree_path(state, settled.epoch);
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, tree_json(settled).to_string()).map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, &path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every stored tree, by epoch.
fn load_trees(state: &Path) -> Result<BTreeMap<u64, EarningsTree>, String> {
    let mut trees = BTreeMap::new();
    for entry in std::fs::read_dir(state).map_err(|e| format!("{}: {e}", state.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !(name.starts_with("epoch-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let (epoch, tree) = tree_from_json(&value).map_err(|e| format!("{}: {e}", path.display()))?;
        trees.insert(epoch, tree);
    }
    Ok(trees)
}

fn earnings_json(shared: &Shared, account: Address) -> Value {
    let epochs: Vec<Value> = shared
        .trees
        .values()
        .rev()
        .filter(|settled| settled.committed_at.is_some())
        .filter_map(|settled| {
            let cumulative = settled.tree.amount(account)?;
            let proof = settled.tree.proof(account)?;
            Some(json!({
                "epoch": settled.epoch,
                "root": format!("{:#x}", settled.tree.root()),
                "cumulative": cumulative.to_string(),
                "proof": proof.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
            }))
        })
        .collect();
    json!({ "account": format!("{account:#x}"), "epochs": epochs })
}

fn status_json(shared: &Shared, args: &OperatorArgs) -> Value {
    let operator = shared.collector.operator();
    json!({
        "settlement": args.settlement,
        "epoch_s": args.epoch_s,
        "collect_s": args.collect_s,
        "collecting": operator.epoch(),
        "reports": operator.reports(),
        "held": shared.collector.held(),
        "rejections": operator.rejections().iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "total_earned": operator.total_earned().to_string(),
        "total_funded": shared.total_funded.to_string(),
        "settled": shared.trees.values().map(|s| json!({
            "epoch": s.epoch, "root": format!("{:#x}", s.tree.root()), "total": s.tree.total().to_string(),
            "accounts": s.tree.len(), "committed_at": s.committed_at,
        })).collect::<Vec<_>>(),
        "commits": shared.commits,
        "commit_errors": shared.commit_errors,
        "last_error": shared.last_error,
    })
}

fn answer(request: &admin::Request, shared: &Mutex<Shared>, args: &OperatorArgs) -> Response {
    let mut shared = shared.lock().expect("no panics while holding it");
    match (request.method, request.path.as_str()) {
        (Method::Post, "/reports") => match shared.collector.accept(&request.body, crate::chain_watch::unix_now_s()) {
            Ok((node, epoch)) => Response::json(&json!({ "node": format!("{node:#x}"), "epoch": epoch })),
            Err(rejection) => Response::json_with("422 Unprocessable Content", &json!({ "rejected": rejection.name() })),
        },
        (Method::Get, "/status") => Response::json(&status_json(&shared, args)),
        (Method::Get, path) if path.starts_with("/earnings/") => match path["/earnings/".len()..].parse::<Address>() {
            Ok(account) => Response::json(&earnings_json(&shared, account)),
            Err(_) => Response::refused(Refusal::BadRequest),
        },
        (Method::Get, _) => Response::refused(Refusal::NotFound),
        _ => Response::refused(Refusal::MethodNotAllowed),
    }
}

pub fn run(args: OperatorArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
    let budget = parse_data(&args.budget_per_epoch).map_err(|e| format!("--budget-per-epoch: {e}"))?;
    let secret = crate::stream_cmd::load_signer(args.key_file.as_deref(), args.password_file.as_deref())?;
    let config = ChainConfig { tx_timeout: Duration::from_secs(args.tx_timeout), ..ChainConfig::default() };
    let chain =
        Chain::connect(&args.chain_rpc, Some(secret.expose()), config).map_err(|e| format!("--chain-rpc {}: {e}", args.chain_rpc))?;
    let address: Address = args.settlement.parse().map_err(|e| format!("--settlement {:?}: {e}", args.settlement))?;
    let settlement = Settlement::new(chain.clone(), address);
    runnel_keystore::create_private_dir_all(&args.state).map_err(|e| format!("--state {}: {e}", args.state.display()))?;
    let (collector, trees) = runtime.block_on(resume(&args, &settlement))?;
    let shared = Mutex::new(Shared { collector, trees, commits: 0, commit_errors: 0, last_error: None, total_funded: U256::ZERO });
    let listener = TcpListener::bind(&args.listen).map_err(|e| format!("--listen {}: {e}", args.listen))?;
    logln!(
        "runnel operator: on http://{} (POST /reports, GET /earnings/<account>, GET /status)",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let server = scope.spawn(|| admin::serve(&listener, &stop, |request| answer(request, &shared, &args)));
        let result = runtime.block_on(settle_loop(&args, &settlement, &shared, budget));
        stop.store(true, Ordering::Release);
        let served = server.join().unwrap_or_else(|_| Err(std::io::Error::other("the server panicked")));
        result.and(served.map_err(|e| format!("operator endpoint: {e}")))
    })
}

/// The collector and the trees to serve, from the chain's latest commit and `--state`.
async fn resume(args: &OperatorArgs, settlement: &Settlement) -> Result<(Collector, BTreeMap<u64, Settled>), String> {
    let me = settlement.chain().sender().map_err(|e| e.to_string())?;
    let operator = settlement.operator().await.map_err(|e| e.to_string())?;
    if operator != me {
        return Err(format!("the settlement's operator is {operator:#x}, not this key's account {me:#x}"));
    }
    let latest = settlement.latest_epoch().await.map_err(|e| e.to_string())?;
    let stored = load_trees(&args.state)?;
    let mut trees = BTreeMap::new();
    for (epoch, tree) in &stored {
        let committed_at = if *epoch <= latest {
            match settlement.commit_info(*epoch).await.map_err(|e| e.to_string())? {
                Some(info) if info.root == tree.root() => Some(info.committed_at),
                // A tree settled but superseded before its commit: not servable.
                _ => continue,
            }
        } else {
            None
        };
        trees.insert(*epoch, Settled { epoch: *epoch, tree: tree.clone(), committed_at });
    }
    if latest > 0 && trees.get(&latest).is_none_or(|s| s.committed_at.is_none()) {
        return Err(format!(
            "the contract's latest commit is epoch {latest}, and {} has no tree with its root: restore the state folder",
            tree_path(&args.state, latest).display()
        ));
    }
    let now_epoch = crate::chain_watch::unix_now_s().saturating_sub(args.collect_s) / args.epoch_s;
    let (first, newest) = match trees.last_key_value() {
        Some((epoch, settled)) => ((*epoch + 1).max(now_epoch).max(1), Some(&settled.tree)),
        None => (now_epoch.max(1), None),
    };
    let tolerance = Tolerance { permille: args.tolerance_permille, bytes: args.tolerance_bytes, messages: args.tolerance_messages };
    let operator = match newest {
        Some(tree) => Operator::resume(first, args.reports_max, tree),
        None => Operator::new(first, args.reports_max),
    }
    .map_err(|e| e.to_string())?
    .with_tolerance(tolerance);
    let collector = Collector::new(operator, args.epoch_s, args.collect_s, args.reports_max).map_err(|e| e.to_string())?;
    Ok((collector, trees))
}

async fn settle_loop(args: &OperatorArgs, settlement: &Settlement, shared: &Mutex<Shared>, budget: U256) -> Result<(), String> {
    while !crate::signals::stop_requested() {
        tokio::time::sleep(TICK).await;
        let due = shared.lock().expect("no panics while holding it").collector.due(crate::chain_watch::unix_now_s());
        if due.is_some() {
            match settlement.total_funded().await {
                Ok(funded) => settle(args, shared, budget, funded)?,
                Err(error) => shared.lock().expect("no panics while holding it").last_error = Some(error.to_string()),
            }
        }
        commit_pending(settlement, shared).await;
    }
    Ok(())
}

/// Settles the due epoch and stores its tree (a commit then picks it up).
fn settle(args: &OperatorArgs, shared: &Mutex<Shared>, budget: U256, funded: U256) -> Result<(), String> {
    let mut shared = shared.lock().expect("no panics while holding it");
    shared.total_funded = funded;
    let budget = budget.min(shared.collector.operator().budget_available(funded));
    let settled = shared.collector.settle(budget, funded).map_err(|e| e.to_string())?;
    logln!(
        "runnel operator: epoch {} settled: {} DATA to {} node(s), {} rejected, {} clamped",
        settled.epoch,
        format_data(settled.allocated),
        settled.earned.len(),
        settled.rejections.total(),
        settled.clamped
    );
    if settled.allocated.is_zero() {
        return Ok(());
    }
    let entry = Settled { epoch: settled.epoch, tree: settled.tree, committed_at: None };
    store(&args.state, &entry)?;
    // An older uncommitted tree is superseded: the new one is cumulative.
    let stale: Vec<u64> = shared.trees.values().filter(|s| s.committed_at.is_none()).map(|s| s.epoch).collect();
    for epoch in stale {
        shared.trees.remove(&epoch);
        let _ = std::fs::remove_file(tree_path(&args.state, epoch));
    }
    shared.trees.insert(entry.epoch, entry);
    while shared.trees.len() > TREES_KEPT {
        let Some((epoch, _)) = shared.trees.pop_first() else { break };
        let _ = std::fs::remove_file(tree_path(&args.state, epoch));
    }
    Ok(())
}

async fn commit_pending(settlement: &Settlement, shared: &Mutex<Shared>) {
    let pending = {
        let shared = shared.lock().expect("no panics while holding it");
        shared.trees.values().rev().find(|s| s.committed_at.is_none()).cloned()
    };
    let Some(pending) = pending else { return };
    let result = async {
        settlement.commit(pending.epoch, &pending.tree).await?;
        settlement.commit_info(pending.epoch).await
    }
    .await;
    let mut shared = shared.lock().expect("no panics while holding it");
    match result {
        Ok(Some(info)) => {
            logln!(
                "runnel operator: committed epoch {} (root {:#x}, total {} DATA)",
                pending.epoch,
                info.root,
                format_data(info.total_earnings)
            );
            if let Some(entry) = shared.trees.get_mut(&pending.epoch) {
                entry.committed_at = Some(info.committed_at);
            }
            shared.commits += 1;
        }
        Ok(None) => shared.last_error = Some(format!("epoch {}: committed, yet the contract shows no root", pending.epoch)),
        Err(error) => {
            logln!("runnel operator: {error}");
            shared.commit_errors += 1;
            shared.last_error = Some(error.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: DATA amounts parse to wei exactly and print back; malformed amounts are errors.
    #[test]
    fn data_amounts() {
        assert_eq!(parse_data("1.5"), Ok(U256::from(1_500_000_000_000_000_000u128)));
        assert_eq!(parse_data("0.000000000000000001"), Ok(U256::from(1)));
        assert_eq!(parse_data("1000"), Ok(U256::from(1000u128 * 10u128.pow(18))));
        assert_eq!(parse_data(".5"), Ok(U256::from(5 * 10u128.pow(17))));
        for bad in ["", ".", "1.0000000000000000001", "-1", "1e18", "1,5", " "] {
            assert!(parse_data(bad).is_err(), "{bad:?}");
        }
        for wei in [0u128, 1, 10u128.pow(18), 1_500_000_000_000_000_000, 123_456_789] {
            assert_eq!(parse_data(&format_data(U256::from(wei))), Ok(U256::from(wei)), "{wei}");
        }
        assert_eq!(format_data(U256::from(1_500_000_000_000_000_000u128)), "1.5");
        assert_eq!(format_data(U256::ZERO), "0");
    }

    // Goal: a stored tree reads back with the same root; a file whose entries do not give
    // the root it names is refused.
    #[test]
    fn stored_trees_round_trip_and_are_checked() {
        let tree = EarningsTree::new([(Address::repeat_byte(1), U256::from(7)), (Address::repeat_byte(2), U256::from(9))]).unwrap();
        let settled = Settled { epoch: 42, tree, committed_at: None };
        let mut value = tree_json(&settled);
        let (epoch, back) = tree_from_json(&value).unwrap();
        assert_eq!((epoch, back.root()), (42, settled.tree.root()));
        value["entries"][0][1] = json!("8");
        assert!(tree_from_json(&value).unwrap_err().contains("not the"));
        assert!(tree_from_json(&json!({ "epoch": 1 })).is_err());
    }
}
