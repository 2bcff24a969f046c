//! The contracts Runnel talks to, as typed bindings, and their deployment on a local chain.
//!
//! - `StreamRegistryV5` and `DATAv2` are the existing network's own, deployed from the npm
//!   artifacts of `@streamr/network-contracts@8.2.0` and `@streamr/data-v2@1.0.4`
//!   (`control/chain/npm`, installed by `scripts/setup.sh`). Only the functions and events
//!   Runnel uses are declared here; their selectors and encodings are the contracts' own, so
//!   any other client of the same contracts sees the same state.
//! - Deployment is for local chains (`runnel dev`, tests). On a public chain the addresses
//!   are configured, and no artifact is read.

use crate::rpc::Chain;
use crate::ChainError;
use alloy::primitives::{Address, Bytes, U256};
use alloy::sol;
use alloy::sol_types::SolCall;
use std::path::PathBuf;

sol! {
    /// The existing network's stream registry (StreamRegistryV5): streams, and per user
    /// publish/subscribe expirations (user address(0) = everyone).
    #[sol(rpc)]
    interface IStreamRegistry {
        struct Permission {
            bool canEdit;
            bool canDelete;
            uint256 publishExpiration;
            uint256 subscribeExpiration;
            bool canGrant;
        }
        event StreamCreated(string id, string metadata);
        event StreamDeleted(string id);
        event StreamUpdated(string id, string metadata);
        event PermissionUpdated(string streamId, address user, bool canEdit, bool canDelete, uint256 publishExpiration, uint256 subscribeExpiration, bool canGrant);
        function initialize(address ensCacheAddr, address trustedForwarderAddress) external;
        function createStream(string calldata streamIdPath, string calldata metadataJsonString) external;
        function deleteStream(string calldata streamId) external;
        function exists(string calldata streamId) external view returns (bool);
        function getStreamMetadata(string calldata streamId) external view returns (string memory);
        function getPermissionsForUser(string calldata streamId, address user) external view returns (Permission memory);
        function grantPermission(string calldata streamId, address user, uint8 permissionType) external;
        function revokePermission(string calldata streamId, address user, uint8 permissionType) external;
        function setExpirationTime(string calldata streamId, address user, uint8 permissionType, uint256 expirationTime) external;
        function setPublicPermission(string calldata streamId, uint256 publishExpiration, uint256 subscribeExpiration) external;
    }

    /// The DATA token (DATAv2: ERC-20 with ERC-677 `transferAndCall`, minting by role).
    #[sol(rpc)]
    interface IDataToken {
        function MINTER_ROLE() external view returns (bytes32);
        function grantRole(bytes32 role, address account) external;
        function mint(address to, uint256 amount) external;
        function balanceOf(address account) external view returns (uint256);
        function approve(address spender, uint256 amount) external returns (bool);
        function transfer(address to, uint256 amount) external returns (bool);
        function transferAndCall(address to, uint256 amount, bytes calldata data) external returns (bool);
    }
}

/// The registry's `PermissionType` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PermissionType {
    Edit = 0,
    Delete = 1,
    Publish = 2,
    Subscribe = 3,
    Grant = 4,
}

/// The npm install this crate's local deployments read artifacts from.
fn npm_dir() -> PathBuf {
    match std::env::var_os("RUNNEL_CHAIN_NPM") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("npm"),
    }
}

const REGISTRY_ARTIFACT: &str =
    "node_modules/@streamr/network-contracts/dist/artifacts/contracts/StreamRegistry/StreamRegistryV5.sol/StreamRegistryV5.json";
const TOKEN_ARTIFACT: &str = "node_modules/@streamr/data-v2/artifacts/contracts/DATAv2.sol/DATAv2.json";

/// The creation bytecode in a Hardhat artifact (`{"bytecode": "0x…"}`).
pub fn artifact_bytecode(relative: &str) -> Result<Bytes, ChainError> {
    let path = npm_dir().join(relative);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ChainError::Setup(format!("cannot read {}: {e} (run scripts/setup.sh, which installs control/chain/npm)", path.display()))
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ChainError::Setup(format!("{} is not JSON: {e}", path.display())))?;
    let code = json
        .get("bytecode")
        .and_then(|b| b.as_str())
        .ok_or_else(|| ChainError::Setup(format!("{} has no \"bytecode\" string", path.display())))?;
    let bytes = hex::decode(code.trim_start_matches("0x"))
        .map_err(|e| ChainError::Setup(format!("{}: bytecode is not hex: {e}", path.display())))?;
    if bytes.is_empty() {
        return Err(ChainError::Setup(format!("{}: empty bytecode", path.display())));
    }
    Ok(bytes.into())
}

/// Where a local deployment put the contracts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub registry: Address,
    pub token: Address,
    /// The block the registry was deployed in: event scans start there.
    pub registry_block: u64,
}

/// Deploys StreamRegistryV5 (initialized with no ENS cache and no trusted forwarder) and
/// DATAv2 from the chain's account, which becomes the token's admin and a minter.
pub async fn deploy_local(chain: &Chain) -> Result<Deployment, ChainError> {
    let (registry, receipt) = chain.deploy("deploy StreamRegistryV5", artifact_bytecode(REGISTRY_ARTIFACT)?).await?;
    let registry_block = receipt.block_number.unwrap_or_default();
    let init = IStreamRegistry::initializeCall { ensCacheAddr: Address::ZERO, trustedForwarderAddress: Address::ZERO };
    chain
        .send(
            "StreamRegistryV5.initialize",
            alloy::rpc::types::TransactionRequest::default().to(registry).input(Bytes::from(init.abi_encode()).into()),
        )
        .await?;
    let (token, _) = chain.deploy("deploy DATAv2", artifact_bytecode(TOKEN_ARTIFACT)?).await?;
    let data = IDataToken::new(token, chain.provider());
    let role = data.MINTER_ROLE().call().await.map_err(|e| chain.rpc_error("DATAv2.MINTER_ROLE", e))?;
    let grant = data.grantRole(role, chain.sender()?).into_transaction_request();
    chain.send("DATAv2.grantRole(MINTER_ROLE)", grant).await?;
    Ok(Deployment { registry, token, registry_block })
}

/// `uint256` max: the registry's "never expires".
pub const NEVER: U256 = U256::MAX;
