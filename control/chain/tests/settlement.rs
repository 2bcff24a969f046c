//! Settlement against a real chain: anvil, the DATAv2 bytecode of the existing network and
//! the committed RunnelSettlement artifact, every read and write over JSON-RPC. Time is
//! advanced with `evm_increaseTime` rather than waited for, so the suite takes seconds.
//!
//! Gas used per operation is printed (`--nocapture`) and recorded in docs/settlement.md.

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use runnel_chain::accounting::{Operator, Rejection};
use runnel_chain::anvil::{Anvil, AnvilOptions};
use runnel_chain::contracts::{deploy_local, IDataToken};
use runnel_chain::merkle::{self, EarningsTree};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::settlement::{RunnelSettlement, Settlement, ARTIFACT_JSON};
use runnel_chain::ChainError;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::receipt::{LinkTraffic, TrafficReport};
use std::collections::BTreeMap;

/// Seconds between a commit and the first withdrawal against it, in these tests.
const FREEZE_S: u64 = 60;
/// One DATA in wei.
const DATA: u128 = 1_000_000_000_000_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn data(amount: u128) -> U256 {
    U256::from(amount)
}

/// anvil with DATAv2 deployed by account 0 (a minter), and a settlement whose operator is
/// account 1, with every role connected.
struct Setup {
    anvil: Anvil,
    owner: Chain,
    token: Address,
    /// The settlement as seen from the operator's account.
    operator: Settlement,
    deploy_gas: u64,
}

async fn setup() -> Setup {
    let anvil = Anvil::start(&AnvilOptions::default()).unwrap();
    let owner = Chain::connect(&anvil.endpoint(), Some(&anvil.dev_key(0)), ChainConfig::default()).unwrap();
    let token = deploy_local(&owner).await.unwrap().token;
    let operator_chain = connect(&anvil, 1);
    let (deployed, receipt) = Settlement::deploy(&owner, token, operator_chain.sender().unwrap(), FREEZE_S).await.unwrap();
    let operator = Settlement::new(operator_chain, deployed.address());
    Setup { anvil, owner, token, operator, deploy_gas: receipt.gas_used }
}

fn connect(anvil: &Anvil, index: usize) -> Chain {
    Chain::connect(&anvil.endpoint(), Some(&anvil.dev_key(index)), ChainConfig::default()).unwrap()
}

impl Setup {
    /// The settlement as seen from dev account `index`.
    fn as_account(&self, index: usize) -> Settlement {
        Settlement::new(connect(&self.anvil, index), self.operator.address())
    }

    async fn mint(&self, to: Address, amount: U256) {
        let request = IDataToken::new(self.token, self.owner.provider()).mint(to, amount).into_transaction_request();
        self.owner.send("mint DATA", request).await.unwrap();
    }

    /// Mints `amount` to dev account `index` and funds `stream` with it from there; returns
    /// the gas of the approval and of the funding.
    async fn sponsor(&self, index: usize, stream: &str, amount: U256) -> (u64, u64) {
        let sponsor = self.as_account(index);
        self.mint(sponsor.chain().sender().unwrap(), amount).await;
        let funding = sponsor.fund(stream, amount).await.unwrap();
        (funding.approve.gas_used, funding.fund.gas_used)
    }

    /// Moves the chain's clock past every freeze so far.
    async fn pass_freeze(&self) {
        let provider = self.owner.provider();
        let _: serde_json::Value = provider.raw_request("evm_increaseTime".into(), [FREEZE_S + 1]).await.unwrap();
        let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
    }
}

/// The name of the contract error a refused call came back with.
fn refusal(result: Result<impl std::fmt::Debug, ChainError>) -> &'static str {
    match result {
        Err(ChainError::Contract { error, .. }) => error,
        other => panic!("expected the contract to refuse, got {other:?}"),
    }
}

/// Withdraws every account of `tree` as of `epoch`, sent by `relayer` (anyone may send it).
/// Returns `(account, proof length, gas)` of each withdrawal.
async fn withdraw_all(relayer: &Settlement, epoch: u64, tree: &EarningsTree) -> Vec<(Address, usize, u64)> {
    let mut gas = Vec::new();
    for (account, cumulative) in tree.entries() {
        let proof = tree.proof(*account).unwrap();
        gas.push((*account, proof.len(), relayer.withdraw(epoch, *account, *cumulative, &proof).await.unwrap().gas_used));
    }
    gas
}

fn stats(name: &str, gas: &[u64]) {
    let (min, max) = (gas.iter().min().unwrap(), gas.iter().max().unwrap());
    eprintln!("gas {name}: min {min} max {max} ({} transactions)", gas.len());
}

// Goal: the committed artifact is what build.sh makes of the committed source (its hash
// is checked here without Node; build.sh --check compares the bytes), for the pinned solc.
#[test]
fn the_artifact_matches_its_source() {
    let artifact: serde_json::Value = serde_json::from_str(ARTIFACT_JSON).unwrap();
    let source = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/contracts/RunnelSettlement.sol")).unwrap();
    use sha2::Digest;
    assert_eq!(artifact["sourceSha256"], hex::encode(sha2::Sha256::digest(&source)), "run control/chain/contracts/build.sh");
    assert!(artifact["solcVersion"].as_str().unwrap().starts_with("0.8.28+"));
    assert_eq!(artifact["contractName"], "RunnelSettlement");
}

// Goal: Merkle edge cases on the real contract — trees of 1..=9 leaves (one leaf, odd
// counts carried up at every depth), one built from duplicate entries — every leaf's proof
// verifies on-chain exactly as in Rust, and every account withdraws exactly its cumulative
// earnings over nine epochs.
#[test]
fn every_tree_size_pays_every_account() {
    runtime().block_on(async {
        let setup = setup().await;
        let (approve_gas, fund_gas) = setup.sponsor(2, "0x0000000000000000000000000000000000000001/edge", data(1_000_000)).await;
        let relayer = setup.as_account(3);
        let accounts: Vec<Address> = (1..=9u64).map(|i| Address::from_word(B256::from(U256::from(0xabc0 + i)))).collect();
        let mut commit_gas = Vec::new();
        // (first payout of the account?, proof length) -> gas of each such withdrawal
        let mut withdraw_gas: BTreeMap<(bool, usize), Vec<u64>> = BTreeMap::new();
        for n in 1..=9u64 {
            // Epoch n: accounts 1..=n, account i at i × 1000 × n (so every epoch owes each
            // account more); the last account is listed twice, half each time.
            let mut entries: Vec<(Address, U256)> = Vec::new();
            for i in 1..n {
                entries.push((accounts[i as usize - 1], U256::from(i * 1_000 * n)));
            }
            entries.push((accounts[n as usize - 1], U256::from(n * 500 * n)));
            entries.push((accounts[n as usize - 1], U256::from(n * 500 * n)));
            let tree = EarningsTree::new(entries).unwrap();
            assert_eq!(tree.len(), n as usize);
            commit_gas.push(setup.operator.commit(n, &tree).await.unwrap().gas_used);
            for (account, cumulative) in tree.entries() {
                let proof = tree.proof(*account).unwrap();
                assert!(merkle::verify(tree.root(), merkle::leaf(*account, *cumulative), &proof));
                assert!(relayer.verify_proof(tree.root(), *account, *cumulative, &proof).await.unwrap(), "{n} leaves");
                assert!(!relayer.verify_proof(tree.root(), *account, *cumulative + U256::from(1), &proof).await.unwrap());
            }
            setup.pass_freeze().await;
            for (account, proof_length, gas) in withdraw_all(&relayer, n, &tree).await {
                // The newest account's first payout writes two fresh storage slots (its
                // `withdrawn` and its token balance); the others update both.
                let first = account == accounts[n as usize - 1];
                withdraw_gas.entry((first, proof_length)).or_default().push(gas);
            }
        }
        for (index, account) in accounts.iter().enumerate() {
            let expected = U256::from((index as u64 + 1) * 1_000 * 9);
            assert_eq!(relayer.token_balance(*account).await.unwrap(), expected, "account {}", index + 1);
            assert_eq!(relayer.withdrawn(*account).await.unwrap(), expected);
        }
        let paid: u64 = (1..=9u64).map(|i| i * 9_000).sum();
        assert_eq!(relayer.token_balance(setup.operator.address()).await.unwrap(), U256::from(1_000_000 - paid));
        assert_eq!(setup.operator.latest_epoch().await.unwrap(), 9);
        eprintln!("gas deploy: {}", setup.deploy_gas);
        eprintln!("gas approve: {approve_gas}");
        eprintln!("gas fund (after approve): {fund_gas}");
        stats("commit", &commit_gas);
        for ((first, proof_length), gas) in &withdraw_gas {
            let which = if *first { "an account's first" } else { "a later one" };
            stats(&format!("withdraw, {which}, proof of {proof_length} nodes"), gas);
        }
    });
}

// Goal: every way a call can be wrong is refused by the contract with its own error, and
// the refusal spends nothing: forged proofs, withdrawals before the freeze or twice,
// commits by others, beyond the funds, out of order, decreasing, or of nothing.
#[test]
fn the_contract_refuses_what_it_must() {
    runtime().block_on(async {
        let setup = setup().await;
        let stream = "0x0000000000000000000000000000000000000001/refusals";
        let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb0));
        let tree = EarningsTree::new([(alice, data(600)), (bob, data(400))]).unwrap();
        let anyone = setup.as_account(4);

        assert_eq!(refusal(setup.operator.commit(1, &tree).await), "Insolvent");
        setup.sponsor(2, stream, data(700)).await;
        assert_eq!(refusal(setup.operator.commit(1, &tree).await), "Insolvent", "700 funded, 1000 owed");
        // ERC-677 funding: one transaction.
        let sponsor = setup.as_account(2);
        setup.mint(sponsor.chain().sender().unwrap(), data(300)).await;
        let transfer_and_call_gas = sponsor.fund_with_transfer_and_call(stream, data(300)).await.unwrap().gas_used;
        assert_eq!(setup.operator.total_funded().await.unwrap(), data(1_000));

        assert_eq!(refusal(anyone.commit(1, &tree).await), "NotOperator");
        assert!(matches!(setup.operator.commit(0, &tree).await, Err(ChainError::Contract { error: "EpochNotIncreasing", .. })));
        assert!(matches!(setup.operator.commit(1, &EarningsTree::new([]).unwrap()).await, Err(ChainError::Invalid(_))));
        let raw = RunnelSettlement::new(setup.operator.address(), setup.operator.chain().provider());
        let zero_root = raw.commit(1, B256::ZERO, U256::ZERO).from(setup.operator.chain().sender().unwrap()).call().await.unwrap_err();
        assert!(zero_root
            .as_decoded_interface_error::<RunnelSettlement::RunnelSettlementErrors>()
            .is_some_and(|e| matches!(e, RunnelSettlement::RunnelSettlementErrors::EmptyRoot(_))));
        let not_token = raw.onTokenTransfer(alice, data(1), Default::default()).from(alice).call().await.unwrap_err();
        assert!(not_token
            .as_decoded_interface_error::<RunnelSettlement::RunnelSettlementErrors>()
            .is_some_and(|e| matches!(e, RunnelSettlement::RunnelSettlementErrors::NotToken(_))));

        setup.operator.commit(3, &tree).await.unwrap();
        assert_eq!(refusal(setup.operator.commit(3, &tree).await), "EpochNotIncreasing");
        assert_eq!(refusal(setup.operator.commit(2, &tree).await), "EpochNotIncreasing");
        let less = EarningsTree::new([(alice, data(600)), (bob, data(399))]).unwrap();
        assert_eq!(refusal(setup.operator.commit(4, &less).await), "EarningsDecreased");

        let proof = tree.proof(alice).unwrap();
        let frozen = anyone.withdraw(3, alice, data(600), &proof).await;
        let Err(ChainError::Contract { error: "Frozen", reason, .. }) = frozen else { panic!("{frozen:?}") };
        let info = setup.operator.commit_info(3).await.unwrap().unwrap();
        assert!(reason.contains(&(info.committed_at + FREEZE_S).to_string()), "{reason}");
        assert_eq!((info.root, info.total_earnings), (tree.root(), data(1_000)));
        assert_eq!(setup.operator.commit_info(2).await.unwrap(), None);
        assert_eq!(refusal(anyone.withdraw(2, alice, data(600), &proof).await), "NotCommitted");

        setup.pass_freeze().await;
        assert_eq!(refusal(anyone.withdraw(3, alice, data(601), &proof).await), "BadProof");
        assert_eq!(refusal(anyone.withdraw(3, bob, data(600), &proof).await), "BadProof");
        assert_eq!(refusal(anyone.withdraw(3, alice, data(600), &[B256::repeat_byte(7)]).await), "BadProof");
        anyone.withdraw(3, alice, data(600), &proof).await.unwrap();
        assert_eq!(refusal(anyone.withdraw(3, alice, data(600), &proof).await), "NothingOwed");
        assert_eq!(anyone.token_balance(alice).await.unwrap(), data(600), "the second withdrawal paid nothing");
        // A forged proof can't take bob's share either: the pool pays exactly the roots.
        anyone.withdraw(3, bob, data(400), &tree.proof(bob).unwrap()).await.unwrap();
        assert_eq!(anyone.token_balance(setup.operator.address()).await.unwrap(), U256::ZERO);
        eprintln!("gas fund (transferAndCall): {transfer_and_call_gas}");
    });
}

/// Signs a report of `links` (neighbor key, bytes sent to it, bytes received from it);
/// messages are bytes / 100.
fn report(key: &PublisherKey, epoch: u64, links: &[(&PublisherKey, u64, u64)]) -> Vec<u8> {
    let links = links
        .iter()
        .map(|(neighbor, sent, received)| LinkTraffic {
            neighbor: neighbor.address(),
            bytes_sent: *sent,
            messages_sent: sent / 100,
            bytes_received: *received,
            messages_received: received / 100,
        })
        .collect();
    TrafficReport { epoch, node: key.address(), links }.sign(key).unwrap().encode()
}

/// floor(budget × bytes / total) per node, computed here independently of the library.
fn shares(budget: U256, credited: &[(Address, u64)]) -> BTreeMap<Address, U256> {
    let total: u64 = credited.iter().map(|(_, bytes)| bytes).sum();
    credited.iter().map(|(node, bytes)| (*node, budget * U256::from(*bytes) / U256::from(total))).collect()
}

// Goal: settlement end to end — a sponsor funds a stream, three nodes report two epochs of
// traffic (with one over-claim, one unknown link, a forged, a late and a repeated report,
// all rejected and counted), the operator commits both roots, and after the freeze each
// node withdraws exactly its share, to the wei.
#[test]
fn three_nodes_are_paid_exactly_their_share() {
    runtime().block_on(async {
        let setup = setup().await;
        let stream = "0x0000000000000000000000000000000000000001/traffic";
        setup.sponsor(5, stream, data(500 * DATA)).await;
        let nodes: Vec<Settlement> = (6..9).map(|index| setup.as_account(index)).collect();
        let keys: Vec<PublisherKey> =
            (6..9).map(|index| PublisherKey::from_hex(&hex::encode(setup.anvil.dev_key(index))).unwrap()).collect();
        let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
        let ids: Vec<Address> = keys.iter().map(|key| Address::from(key.address())).collect();
        let outsider = PublisherKey::generate();
        let mut operator = Operator::new(1, 16).unwrap();

        // Epoch 1: every link in both directions, all consistent (senders count what they
        // sent, receivers what arrived; some was lost on the way).
        for bytes in [
            report(a, 1, &[(b, 10_500, 4_000), (c, 6_000, 2_000)]),
            report(b, 1, &[(a, 4_000, 10_000), (c, 3_000, 5_000)]),
            report(c, 1, &[(a, 2_000, 6_000), (b, 5_200, 3_000)]),
        ] {
            operator.submit(&bytes).unwrap();
        }
        let funded = setup.operator.total_funded().await.unwrap();
        let budget_1 = data(100 * DATA);
        let epoch_1 = operator.settle(budget_1, funded).unwrap();
        assert_eq!(epoch_1.rejections.total(), 0);
        let expected_1 = shares(budget_1, &[(ids[0], 16_000), (ids[1], 7_000), (ids[2], 7_000)]);
        assert_eq!(epoch_1.earned, expected_1);
        assert_eq!(epoch_1.allocated + epoch_1.dust, budget_1);
        assert!(epoch_1.dust > U256::ZERO, "100 DATA / 30 000 bytes leaves dust");
        setup.operator.commit(1, &epoch_1.tree).await.unwrap();

        // Epoch 2: C claims 9 000 bytes from B, who says it sent 5 000 (over-claim); A lists
        // a link to a node that sent no report (unknown link); a forged copy of A's report,
        // a report for epoch 1 and a second report from B are refused.
        let mut forged = report(a, 2, &[(b, 1_000, 50_000)]);
        forged[31 + 20 + 7] ^= 1; // bytes_sent of its one link
        assert_eq!(operator.submit(&forged), Err(Rejection::BadSignature));
        assert_eq!(operator.submit(&report(c, 1, &[])), Err(Rejection::WrongEpoch));
        operator.submit(&report(a, 2, &[(b, 8_000, 1_000), (&outsider, 0, 1_000)])).unwrap();
        operator.submit(&report(b, 2, &[(a, 1_000, 8_000), (c, 5_000, 0)])).unwrap();
        assert_eq!(operator.submit(&report(b, 2, &[(a, 9_000, 9_000)])), Err(Rejection::DuplicateReport));
        operator.submit(&report(c, 2, &[(b, 0, 9_000)])).unwrap();
        let funded = setup.operator.total_funded().await.unwrap();
        let budget_2 = data(200 * DATA) + U256::from(1);
        let epoch_2 = operator.settle(budget_2, funded).unwrap();
        for (reason, count) in epoch_2.rejections.iter() {
            let expected = match reason {
                Rejection::BadSignature | Rejection::WrongEpoch | Rejection::DuplicateReport => 1,
                Rejection::UnknownLink | Rejection::OverClaim => 1,
                Rejection::Malformed | Rejection::TooManyReports => 0,
            };
            assert_eq!(count, expected, "{}", reason.name());
        }
        let expected_2 = shares(budget_2, &[(ids[0], 8_000), (ids[1], 1_000)]);
        assert_eq!(epoch_2.earned, expected_2, "C earns nothing, B only for what A received");
        setup.operator.commit(2, &epoch_2.tree).await.unwrap();

        // Before the freeze ends nobody is paid.
        let proof = epoch_2.tree.proof(ids[0]).unwrap();
        assert_eq!(refusal(nodes[0].withdraw(2, ids[0], epoch_2.tree.amount(ids[0]).unwrap(), &proof).await), "Frozen");
        setup.pass_freeze().await;
        // A takes epoch 1's earnings first, then the rest; B and C take everything at once.
        let tree_1 = &epoch_1.tree;
        nodes[0].withdraw(1, ids[0], tree_1.amount(ids[0]).unwrap(), &tree_1.proof(ids[0]).unwrap()).await.unwrap();
        assert_eq!(nodes[0].token_balance(ids[0]).await.unwrap(), expected_1[&ids[0]]);
        for (node, id) in nodes.iter().zip(&ids) {
            let cumulative = epoch_2.tree.amount(*id).unwrap();
            node.withdraw(2, *id, cumulative, &epoch_2.tree.proof(*id).unwrap()).await.unwrap();
            let expected = expected_1[id] + expected_2.get(id).copied().unwrap_or_default();
            assert_eq!(node.token_balance(*id).await.unwrap(), expected, "node {id:#x} is paid its share to the wei");
            assert_eq!(cumulative, expected);
        }
        let paid = epoch_1.allocated + epoch_2.allocated;
        assert_eq!(setup.operator.token_balance(setup.operator.address()).await.unwrap(), data(500 * DATA) - paid);
        assert_eq!(operator.rejections().total(), 5);
    });
}
