//! Settlement end to end (issue 9): a sponsor funds the settlement contract on anvil; three
//! `runnel node`s (dataplane, control, libp2p peering on loopback) relay a publisher's
//! messages and push their signed traffic reports to `runnel operator`, which commits each
//! epoch's earnings root; each node's account then withdraws exactly its share, checked to
//! the wei against an independent recomputation from the nodes' own reports.
//!
//! Phases (each check names its phase when it fails):
//! 1. anvil, DATAv2 and RunnelSettlement (operator: anvil account 1, a one-hour freeze),
//!    funded with 1000 DATA; the operator starts, then the nodes, which mesh;
//! 2. traffic for a few epochs: the operator commits at least two roots; then the traffic
//!    stops and the commits stop with it;
//! 3. the committed tree gives each node what the nodes' reports earn it under the rules
//!    of docs/settlement.md, recomputed here, to the wei; nothing is rejected;
//! 4. a withdrawal before the freeze ends and a forged proof both revert by name;
//! 5. past the freeze (`evm_increaseTime`), `runnel earnings` shows each share and
//!    `runnel withdraw` pays it: each node's DATA balance is exactly its share; a second
//!    withdrawal owes nothing.

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use runnel_chain::anvil::{Anvil, AnvilOptions};
use runnel_chain::contracts::{deploy_local, IDataToken};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::settlement::Settlement;
use runnel_peering::Identity;
use runnel_proto::receipt::SignedReport;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod common;

use common::{temp_dir, Process};

const NODES: usize = 3;
const EPOCH_S: u64 = 2;
const COLLECT_S: u64 = 1;
const FREEZE_S: u64 = 3600;
const FUNDED_DATA: u64 = 1000;
const BUDGET_DATA: u64 = 10;
/// The operator's tolerance for boundary skew, generous for 2 s epochs (docs/settlement.md).
const TOLERANCE_PERMILLE: u64 = 250;
const TOLERANCE_BYTES: u64 = 64 * 1024;
const TOLERANCE_MESSAGES: u64 = 64;
const STREAM_PATH: &str = "/settlement-e2e";

fn wei(data: u64) -> U256 {
    U256::from(data) * U256::from(10u64).pow(U256::from(18))
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn private_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn http_get(address: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
}

fn wait_for(what: &str, timeout: Duration, logs: &[&Path], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            let tails: String = logs
                .iter()
                .map(|path| {
                    let log = std::fs::read_to_string(path).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    format!("--- {}\n{}\n", path.display(), lines[lines.len().saturating_sub(15)..].join("\n"))
                })
                .collect();
            panic!("{what}: not within {timeout:?}\n{tails}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Node {
    identity: Identity,
    admin: SocketAddr,
    p2p: String,
    log: std::path::PathBuf,
    _process: Process,
}

fn start_node(dir: &Path, index: usize, bootstrap: Option<&str>, stream: &str, operator: &str) -> Node {
    let identity = Identity::generate();
    let key_file = dir.join(format!("node{index}.key"));
    private_file(&key_file, &format!("{}\n", identity.publisher_key().secret_hex()));
    let (udp, admin, p2p) = (free_udp_port(), free_tcp_port(), free_tcp_port());
    let bootstrap = bootstrap.map(|b| format!("\"{b}\"")).unwrap_or_default();
    let config = dir.join(format!("node{index}.toml"));
    private_file(
        &config,
        &format!(
            "[node]\nlisten = \"127.0.0.1:{udp}\"\nshards = 1\nverify = \"all\"\n\n[control]\nadmin = \"127.0.0.1:{admin}\"\n\
             join = [\"{stream}#0\"]\nipc = \"{}\"\nkey_file = \"{}\"\np2p_listen = [\"/ip4/127.0.0.1/tcp/{p2p}\"]\nbootstrap = [{bootstrap}]\n\
             settlement_epoch_s = {EPOCH_S}\nsettlement_operator = \"{operator}\"\n",
            dir.join(format!("node{index}.sock")).display(),
            key_file.display(),
        ),
    );
    let log = dir.join(format!("node{index}.log"));
    let process = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["node", "--status-interval", "0", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p2p = format!("/ip4/127.0.0.1/tcp/{p2p}/p2p/{}", identity.peer_id());
    Node { identity, admin: SocketAddr::from(([127, 0, 0, 1], admin)), p2p, log, _process: Process(process) }
}

fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel")).args(args).output().unwrap()
}

/// Each node's reports by epoch, decoded and verified, from its `/settlement/reports`.
fn reports(nodes: &[Node]) -> BTreeMap<u64, Vec<SignedReport>> {
    let mut by_epoch: BTreeMap<u64, Vec<SignedReport>> = BTreeMap::new();
    for node in nodes {
        let json = http_get(node.admin, "/settlement/reports").unwrap();
        for entry in json["reports"].as_array().unwrap() {
            let signed = SignedReport::decode(&hex::decode(entry["report"].as_str().unwrap()).unwrap()).unwrap();
            signed.verify(&mut runnel_proto::crypto::Verifier::default()).unwrap();
            by_epoch.entry(signed.report().epoch).or_default().push(signed);
        }
    }
    by_epoch
}

/// The rules of docs/settlement.md, written out again: per epoch, each receipt within the
/// tolerance of its sender's figures credits the sender with `min(received, sent)` bytes;
/// the budget is split pro rata, rounded down. Cumulative earnings per node up to `last`.
fn expected_earnings(by_epoch: &BTreeMap<u64, Vec<SignedReport>>, last: u64, funded: U256) -> BTreeMap<Address, U256> {
    let fits = |sent: u64, received: u64, slack: u64| {
        u128::from(received) <= u128::from(sent) * u128::from(1000 + TOLERANCE_PERMILLE) / 1000 + u128::from(slack)
    };
    let mut cumulative: BTreeMap<Address, U256> = BTreeMap::new();
    let mut earned_total = U256::ZERO;
    for reports in by_epoch.range(..=last).map(|(_, reports)| reports) {
        let by_node: BTreeMap<[u8; 20], _> = reports.iter().map(|r| (r.report().node, r.report())).collect();
        let mut credited: BTreeMap<Address, u128> = BTreeMap::new();
        for (receiver, report) in &by_node {
            for receipt in &report.links {
                let Some(sent) = by_node.get(&receipt.neighbor).and_then(|s| s.links.iter().find(|l| l.neighbor == *receiver)) else {
                    continue;
                };
                if fits(sent.bytes_sent, receipt.bytes_received, TOLERANCE_BYTES)
                    && fits(sent.messages_sent, receipt.messages_received, TOLERANCE_MESSAGES)
                {
                    *credited.entry(Address::from(receipt.neighbor)).or_default() +=
                        u128::from(receipt.bytes_received.min(sent.bytes_sent));
                }
            }
        }
        credited.retain(|_, bytes| *bytes > 0);
        let total: u128 = credited.values().sum();
        if total == 0 {
            continue;
        }
        let budget = wei(BUDGET_DATA).min(funded - earned_total);
        for (node, bytes) in credited {
            let share = budget * U256::from(bytes) / U256::from(total);
            *cumulative.entry(node).or_default() += share;
            earned_total += share;
        }
    }
    cumulative
}

#[test]
fn nodes_are_paid_for_the_traffic_they_relay() {
    let dir = temp_dir("settlement");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Phase 1: the chain, the operator, the nodes.
    let anvil = Anvil::start(&AnvilOptions::default()).unwrap();
    let endpoint = anvil.endpoint();
    let (sponsor_key, operator_key, payer_key) = (anvil.dev_key(0), anvil.dev_key(1), anvil.dev_key(2));
    let (settlement, stream) = runtime.block_on(async {
        let sponsor = Chain::connect(&endpoint, Some(&sponsor_key), ChainConfig::default()).unwrap();
        let operator = Chain::connect(&endpoint, Some(&operator_key), ChainConfig::default()).unwrap().sender().unwrap();
        let deployment = deploy_local(&sponsor).await.unwrap();
        let (settlement, _) = Settlement::deploy(&sponsor, deployment.token, operator, FREEZE_S).await.unwrap();
        let mint = IDataToken::new(deployment.token, sponsor.provider())
            .mint(sponsor.sender().unwrap(), wei(FUNDED_DATA))
            .into_transaction_request();
        sponsor.send("mint", mint).await.unwrap();
        let stream = format!("{:#x}{STREAM_PATH}", sponsor.sender().unwrap());
        settlement.fund(&stream, wei(FUNDED_DATA)).await.unwrap();
        (settlement.address(), stream)
    });
    let settlement_text = format!("{settlement:#x}");
    let (operator_file, payer_file) = (dir.0.join("operator.key"), dir.0.join("payer.key"));
    private_file(&operator_file, &hex::encode(operator_key));
    private_file(&payer_file, &hex::encode(payer_key));
    let operator_admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let operator_url = format!("http://{operator_admin}");
    let operator_log = dir.0.join("operator.log");
    let _operator = Process(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["operator", "--listen", &operator_admin.to_string(), "--chain-rpc", &endpoint, "--settlement", &settlement_text])
            .args([
                "--epoch-s",
                &EPOCH_S.to_string(),
                "--collect-s",
                &COLLECT_S.to_string(),
                "--budget-per-epoch",
                &BUDGET_DATA.to_string(),
            ])
            .args(["--tolerance-permille", &TOLERANCE_PERMILLE.to_string(), "--tolerance-bytes", &TOLERANCE_BYTES.to_string()])
            .args(["--tolerance-messages", &TOLERANCE_MESSAGES.to_string(), "--key-file"])
            .arg(&operator_file)
            .arg("--state")
            .arg(dir.0.join("operator-state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&operator_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("phase 1: the operator serves", Duration::from_secs(20), &[&operator_log], || http_get(operator_admin, "/status").is_ok());
    let first = start_node(&dir.0, 0, None, &stream, &operator_url);
    let bootstrap = first.p2p.clone();
    let mut nodes = vec![first];
    for index in 1..NODES {
        nodes.push(start_node(&dir.0, index, Some(&bootstrap), &stream, &operator_url));
    }
    let mut logs: Vec<&Path> = nodes.iter().map(|n| n.log.as_path()).collect();
    logs.push(&operator_log);
    wait_for("phase 1: the nodes mesh", Duration::from_secs(60), &logs, || {
        nodes
            .iter()
            .all(|node| http_get(node.admin, "/status").is_ok_and(|s| s["neighbors"].as_array().is_some_and(|n| n.len() == NODES - 1)))
    });

    // Phase 2: traffic from node 0 to subscribers at nodes 1 and 2, for a few epochs.
    let publisher_file = dir.0.join("publisher.key");
    private_file(&publisher_file, &runnel_proto::crypto::PublisherKey::generate().secret_hex());
    let part = format!("{stream}#0");
    let subscribers: Vec<Process> = nodes[1..]
        .iter()
        .map(|node| {
            Process(
                Command::new(env!("CARGO_BIN_EXE_runnel"))
                    .args(["sub", "--raw", "--stream", &part, "--node", &node.p2p])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let publisher = Process(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["pub", "--stream", &part, "--node", &nodes[0].p2p, "--rate", "500", "--size", "200", "--count", "1000000", "--key-file"])
            .arg(&publisher_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let committed =
        |status: &serde_json::Value| status["settled"].as_array().map_or(0, |s| s.iter().filter(|e| e["committed_at"].is_u64()).count());
    wait_for("phase 2: the operator commits two roots", Duration::from_secs(60), &logs, || {
        http_get(operator_admin, "/status").is_ok_and(|status| committed(&status) >= 2)
    });
    drop(publisher);
    drop(subscribers);
    let chain = Chain::connect(&endpoint, Some(&payer_key), ChainConfig::default()).unwrap();
    let contract = Settlement::new(chain, settlement);
    // No traffic, no credit, no commit: the latest epoch settles down.
    let mut last = runtime.block_on(contract.latest_epoch()).unwrap();
    let mut stable_since = Instant::now();
    wait_for("phase 2: commits stop with the traffic", Duration::from_secs(30), &logs, || {
        let now = runtime.block_on(contract.latest_epoch()).unwrap();
        if now != last {
            (last, stable_since) = (now, Instant::now());
        }
        stable_since.elapsed() > Duration::from_secs(3 * EPOCH_S + COLLECT_S)
    });

    // Phase 3: the committed tree is what the nodes' own reports earn them.
    let status = http_get(operator_admin, "/status").unwrap();
    for (reason, count) in status["rejections"].as_object().unwrap() {
        assert_eq!(count.as_u64(), Some(0), "phase 3: the operator rejected reports ({reason}): {status}");
    }
    let expected = expected_earnings(&reports(&nodes), last, wei(FUNDED_DATA));
    let accounts: Vec<Address> = nodes.iter().map(|n| Address::from(n.identity.address())).collect();
    assert!(expected.len() >= 2, "phase 3: fewer than two nodes earned anything: {expected:?}\n{status}");
    assert!(expected.keys().all(|a| accounts.contains(a)), "phase 3: a stranger earned: {expected:?}");
    let total: U256 = expected.values().copied().sum();
    println!("phase 3: epoch {last} committed; shares in DATA wei: {expected:?}; operator: {status}");
    let info = runtime.block_on(contract.commit_info(last)).unwrap().expect("phase 3: the latest epoch is committed");
    assert_eq!(info.total_earnings, total, "phase 3: the committed total is not the recomputed one: {expected:?}\n{status}");

    // Phase 4: early and forged withdrawals revert.
    let account = accounts.iter().copied().find(|a| expected.contains_key(a)).unwrap();
    let early = runnel(&[
        "withdraw",
        "--operator",
        &operator_url,
        "--chain-rpc",
        &endpoint,
        "--settlement",
        &settlement_text,
        "--account",
        &format!("{account:#x}"),
        "--epoch",
        &last.to_string(),
        "--key-file",
        payer_file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success() && stderr.contains("Frozen"), "phase 4: an early withdrawal: {stderr}");
    let earnings = http_get(operator_admin, &format!("/earnings/{account:#x}")).unwrap();
    let newest = &earnings["epochs"][0];
    let proof: Vec<B256> = newest["proof"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().parse().unwrap()).collect();
    let cumulative = U256::from_str_radix(newest["cumulative"].as_str().unwrap(), 10).unwrap();
    assert_eq!(cumulative, expected[&account], "phase 4: the operator's figure for {account:#x}");
    runtime.block_on(async {
        let provider = contract.chain().provider();
        let _: serde_json::Value = provider.raw_request("evm_increaseTime".into(), (FREEZE_S,)).await.unwrap();
        let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
        let mut forged = proof.clone();
        forged.push(B256::repeat_byte(7));
        for (amount, proof, what) in [(cumulative + U256::from(1), &proof, "one wei more"), (cumulative, &forged, "a forged proof")] {
            match contract.withdraw(last, account, amount, proof).await {
                Err(runnel_chain::ChainError::Contract { error: "BadProof", .. }) => {}
                other => panic!("phase 4: {what} was not refused as BadProof: {other:?}"),
            }
        }
    });

    // Phase 5: past the freeze, each node withdraws exactly its share.
    for account in &accounts {
        let share = expected.get(account).copied().unwrap_or_default();
        let args = |command: &'static str| {
            vec![
                command.to_string(),
                "--operator".into(),
                operator_url.clone(),
                "--chain-rpc".into(),
                endpoint.clone(),
                "--settlement".into(),
                settlement_text.clone(),
                "--account".into(),
                format!("{account:#x}"),
                "--key-file".into(),
                payer_file.display().to_string(),
                "--json".into(),
            ]
        };
        let run = |command: &'static str| {
            let output = Command::new(env!("CARGO_BIN_EXE_runnel")).args(args(command)).output().unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).to_string(),
                String::from_utf8_lossy(&output.stderr).to_string(),
            )
        };
        let (ok, stdout, stderr) = run("earnings");
        assert!(ok, "phase 5: runnel earnings: {stderr}");
        let shown: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(shown["withdrawable_wei"], share.to_string(), "phase 5: {shown}");
        if share.is_zero() {
            continue;
        }
        let (ok, stdout, stderr) = run("withdraw");
        assert!(ok, "phase 5: runnel withdraw: {stderr}");
        let paid: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(paid["paid_wei"], share.to_string(), "phase 5: {paid}");
        let balance = runtime.block_on(contract.token_balance(*account)).unwrap();
        assert_eq!(balance, share, "phase 5: {account:#x}'s DATA balance, to the wei");
        let (ok, _, stderr) = run("withdraw");
        assert!(!ok && stderr.contains("NothingOwed"), "phase 5: a second withdrawal: {stderr}");
    }
    drop(anvil);
}
