//! The registry against a real chain: anvil, the StreamRegistryV5 and DATAv2 bytecode of the
//! existing network, every read and write over JSON-RPC.

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use runnel_chain::anvil::{Anvil, AnvilOptions};
use runnel_chain::contracts::{deploy_local, Deployment, IStreamRegistry, PermissionType};
use runnel_chain::permissions::Follower;
use runnel_chain::registry::{Access, Registry};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::ChainError;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn address_of(key: &[u8; 32]) -> Address {
    PrivateKeySigner::from_bytes(&(*key).into()).unwrap().address()
}

struct Setup {
    anvil: Anvil,
    owner: Chain,
    deployment: Deployment,
}

async fn setup() -> Setup {
    let anvil = Anvil::start(&AnvilOptions::default()).unwrap();
    let owner = Chain::connect(&anvil.endpoint(), Some(&anvil.dev_key(0)), ChainConfig::default()).unwrap();
    let deployment = deploy_local(&owner).await.unwrap();
    Setup { anvil, owner, deployment }
}

/// A JSON-RPC call over a bare HTTP/1.1 connection: another client, not Runnel's.
fn raw_rpc(endpoint: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let address = endpoint.trim_start_matches("http://");
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let json = &response[response.find("\r\n\r\n").expect("an HTTP response") + 4..];
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{method}: {e}: {json}"));
    assert!(value.get("error").is_none(), "{method} failed: {value}");
    value["result"].clone()
}

/// Polls `eth_getTransactionReceipt` until the transaction is mined (anvil mines a sent
/// transaction right away, but the receipt may be a moment behind the hash).
fn wait_for_receipt(endpoint: &str, hash: &serde_json::Value) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let receipt = raw_rpc(endpoint, "eth_getTransactionReceipt", serde_json::json!([hash]));
        if !receipt.is_null() {
            return receipt;
        }
        assert!(std::time::Instant::now() < deadline, "transaction {hash} not mined in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn permissions_follow_the_registry_whoever_writes_them() {
    runtime().block_on(async {
        let Setup { anvil, owner, deployment } = setup().await;
        let registry = Registry::new(owner.clone(), deployment.registry);
        let (stream, _) = registry.create_stream("/sensors", 2).await.unwrap();
        assert_eq!(stream, format!("{:#x}/sensors", owner.sender().unwrap()));
        let publisher = address_of(&anvil.dev_key(1));
        let reader = Chain::connect(&anvil.endpoint(), None, ChainConfig::default()).unwrap();
        let mut follower = Follower::new(reader, deployment.registry, deployment.registry_block);
        follower.poll().await.unwrap();
        let book = follower.book();
        assert_eq!(book.stream(&stream).unwrap().partitions, 2);
        assert!(book.may_publish(&stream, owner.sender().unwrap(), now()), "the creator may publish");
        assert!(!book.may_publish(&stream, publisher, now()));
        assert_eq!(book.policies(now()).len(), 2);

        // Runnel's own writes.
        registry.grant(&stream, Some(publisher), Access::Publish, None).await.unwrap();
        follower.poll().await.unwrap();
        assert!(follower.book().may_publish(&stream, publisher, now()));
        assert!(!follower.book().may_subscribe(&stream, publisher, now()));
        let policy = follower.book().policies(now());
        let publishers = policy.values().next().unwrap().as_ref().expect("restricted");
        assert_eq!(publishers.get(&publisher.into_array()), Some(&u64::MAX));
        registry.revoke(&stream, Some(publisher), Access::Publish).await.unwrap();
        follower.poll().await.unwrap();
        assert!(!follower.book().may_publish(&stream, publisher, now()));

        // Expiry: a grant that ends in the past holds at no time after it.
        registry.grant(&stream, Some(publisher), Access::Subscribe, Some(now() - 10)).await.unwrap();
        follower.poll().await.unwrap();
        assert!(!follower.book().may_subscribe(&stream, publisher, now()));
        assert!(follower.book().may_subscribe(&stream, publisher, now() - 20));

        // Public publishing, and back.
        registry.grant(&stream, None, Access::Publish, None).await.unwrap();
        follower.poll().await.unwrap();
        assert!(follower.book().may_publish(&stream, Address::repeat_byte(0x77), now()));
        assert!(follower.book().policies(now()).values().all(Option::is_none));
        registry.revoke(&stream, None, Access::Publish).await.unwrap();
        follower.poll().await.unwrap();
        assert!(!follower.book().may_publish(&stream, Address::repeat_byte(0x77), now()));

        // Another client: a raw eth_sendTransaction from the stream's owner account (unlocked
        // in anvil), calldata encoded from the contract's ABI.
        let subscriber = Address::repeat_byte(0x42);
        let call = IStreamRegistry::grantPermissionCall {
            streamId: stream.clone(),
            user: subscriber,
            permissionType: PermissionType::Subscribe as u8,
        };
        let hash = raw_rpc(
            &anvil.endpoint(),
            "eth_sendTransaction",
            serde_json::json!([{
                "from": format!("{:#x}", owner.sender().unwrap()),
                "to": format!("{:#x}", deployment.registry),
                "data": format!("0x{}", hex::encode(call.abi_encode())),
            }]),
        );
        let receipt = wait_for_receipt(&anvil.endpoint(), &hash);
        assert_eq!(receipt["status"], "0x1", "{receipt}");
        follower.poll().await.unwrap();
        assert!(follower.book().may_subscribe(&stream, subscriber, now()));
        assert!(!follower.book().may_publish(&stream, subscriber, now()));

        // The contract agrees with the book.
        let direct = registry.permissions(&stream, subscriber).await.unwrap();
        assert_eq!(direct.subscribeExpiration, U256::MAX);
        assert_eq!(direct.publishExpiration, U256::ZERO);
    });
}

#[test]
fn a_reorg_rolls_the_book_back() {
    runtime().block_on(async {
        let Setup { anvil, owner, deployment } = setup().await;
        let registry = Registry::new(owner.clone(), deployment.registry);
        let (stream, _) = registry.create_stream("/reorg", 1).await.unwrap();
        let publisher = address_of(&anvil.dev_key(2));
        let mut follower = Follower::new(owner.clone(), deployment.registry, deployment.registry_block);
        follower.poll().await.unwrap();
        let snapshot = raw_rpc(&anvil.endpoint(), "evm_snapshot", serde_json::json!([]));
        registry.grant(&stream, Some(publisher), Access::Publish, None).await.unwrap();
        follower.poll().await.unwrap();
        assert!(follower.book().may_publish(&stream, publisher, now()));
        // The grant's block is replaced by others: the chain the node now serves never had it.
        assert_eq!(raw_rpc(&anvil.endpoint(), "evm_revert", serde_json::json!([snapshot])), true);
        raw_rpc(&anvil.endpoint(), "anvil_mine", serde_json::json!(["0x3"]));
        let report = follower.poll().await.unwrap();
        assert!(report.reorged_blocks >= 1, "{report:?}");
        assert_eq!(follower.reorgs, 1);
        assert!(!follower.book().may_publish(&stream, publisher, now()), "the reorged-out grant is gone");
        assert!(follower.book().may_publish(&stream, owner.sender().unwrap(), now()), "what came before the fork stays");
        // And events after the fork are read once.
        registry.grant(&stream, Some(publisher), Access::Subscribe, None).await.unwrap();
        let report = follower.poll().await.unwrap();
        assert_eq!((report.events, report.reorged_blocks), (1, 0));
        assert!(follower.book().may_subscribe(&stream, publisher, now()));
    });
}

/// A TCP relay to the chain that can be cut and restored on the same port. Cutting it also
/// severs the connections already open (a client's pooled keep-alive connection must not
/// survive an outage the way it would never survive a real one).
struct Cut {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cut {
    fn start(target: u16) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (flag, connections) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    // Down: accept and hang up, as a dead load balancer does.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                connections.lock().unwrap().push(client.try_clone().unwrap());
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Cut { port, up, open }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.open.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn an_rpc_outage_is_an_error_and_the_follower_catches_up_after_it() {
    runtime().block_on(async {
        let Setup { anvil, owner, deployment } = setup().await;
        let registry = Registry::new(owner.clone(), deployment.registry);
        let (stream, _) = registry.create_stream("/outage", 1).await.unwrap();
        let cut = Cut::start(anvil.port());
        let config = ChainConfig { rpc_timeout: Duration::from_millis(500), ..ChainConfig::default() };
        let reader = Chain::connect(&format!("http://127.0.0.1:{}", cut.port), None, config).unwrap();
        let mut follower = Follower::new(reader, deployment.registry, deployment.registry_block);
        follower.poll().await.unwrap();
        let synced = follower.synced_to().unwrap();

        cut.down();
        let publisher = Address::repeat_byte(0x31);
        registry.grant(&stream, Some(publisher), Access::Publish, None).await.unwrap();
        let started = std::time::Instant::now();
        let error = follower.poll().await.unwrap_err();
        assert!(matches!(error, ChainError::Rpc { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "an outage is an error, not a hang");
        assert_eq!(follower.synced_to(), Some(synced), "nothing half-applied");
        assert!(follower.book().may_publish(&stream, owner.sender().unwrap(), now()), "the book is kept");

        cut.restore();
        follower.poll().await.unwrap();
        assert!(follower.book().may_publish(&stream, publisher, now()), "caught up on what happened meanwhile");
    });
}

#[test]
fn a_reverted_transaction_is_an_error_and_leaves_no_nonce_gap() {
    runtime().block_on(async {
        let Setup { anvil, owner, deployment } = setup().await;
        let registry = Registry::new(owner.clone(), deployment.registry);
        let (stream, _) = registry.create_stream("/nonce", 1).await.unwrap();
        // Someone without Grant permission tries to grant: the registry reverts.
        let stranger = Chain::connect(&anvil.endpoint(), Some(&anvil.dev_key(3)), ChainConfig::default()).unwrap();
        let theirs = Registry::new(stranger, deployment.registry);
        let error = theirs.grant(&stream, Some(Address::repeat_byte(1)), Access::Publish, None).await.unwrap_err();
        assert!(matches!(error, ChainError::Rejected { .. } | ChainError::Reverted { .. }), "{error}");
        // The same account's next transaction goes through (no nonce gap).
        let (own, _) = theirs.create_stream("/mine", 1).await.unwrap();
        assert!(own.ends_with("/mine"));
        // A missing stream: clear, not a panic.
        assert_eq!(registry.metadata("0x0000000000000000000000000000000000000001/none").await.unwrap(), None);
        assert_eq!(registry.metadata(&stream).await.unwrap().as_deref(), Some(r#"{"partitions":1}"#));
    });
}
