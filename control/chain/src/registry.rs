//! The registry writes behind `runnel stream create|grant|revoke`, and single-user reads.

use crate::contracts::{IStreamRegistry, PermissionType, NEVER};
use crate::rpc::Chain;
use crate::ChainError;
use alloy::primitives::{Address, U256};
use alloy::rpc::types::TransactionReceipt;
use runnel_proto::stream::{parse_stream_id, PARTITIONS_MAX};

/// Publish or subscribe: the two permissions the dataplane cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Publish,
    Subscribe,
}

impl Access {
    fn permission_type(self) -> u8 {
        match self {
            Access::Publish => PermissionType::Publish as u8,
            Access::Subscribe => PermissionType::Subscribe as u8,
        }
    }
}

impl std::str::FromStr for Access {
    type Err = ChainError;
    fn from_str(text: &str) -> Result<Self, ChainError> {
        match text {
            "publish" => Ok(Access::Publish),
            "subscribe" => Ok(Access::Subscribe),
            other => Err(ChainError::Invalid(format!("{other:?} is not a permission: write publish or subscribe"))),
        }
    }
}

/// The registry at an address, written to from the chain's account.
#[derive(Clone, Debug)]
pub struct Registry {
    chain: Chain,
    address: Address,
}

impl Registry {
    pub fn new(chain: Chain, address: Address) -> Registry {
        Registry { chain, address }
    }

    pub fn address(&self) -> Address {
        self.address
    }

    fn contract(&self) -> IStreamRegistry::IStreamRegistryInstance<&alloy::providers::DynProvider> {
        IStreamRegistry::new(self.address, self.chain.provider())
    }

    /// Creates `0x<sender>/<path>` with `partitions` partitions; returns its id. The
    /// creator gets every permission (the contract's rule).
    pub async fn create_stream(&self, path: &str, partitions: u32) -> Result<(String, TransactionReceipt), ChainError> {
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(ChainError::Invalid(format!("partitions must be 1..={PARTITIONS_MAX}, not {partitions}")));
        }
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        let id = parse_stream_id(&format!("{:#x}{path}", self.chain.sender()?)).map_err(|e| ChainError::Invalid(e.0))?;
        let metadata = serde_json::json!({ "partitions": partitions }).to_string();
        let request = self.contract().createStream(path, metadata).into_transaction_request();
        let receipt = self.chain.send(&format!("create stream {id}"), request).await?;
        Ok((id, receipt))
    }

    /// Gives `user` (`None`: everyone) `access` until `until` (Unix seconds; `None`: for ever).
    pub async fn grant(
        &self,
        stream: &str,
        user: Option<Address>,
        access: Access,
        until: Option<u64>,
    ) -> Result<TransactionReceipt, ChainError> {
        let who = user.unwrap_or(Address::ZERO);
        let until = until.map_or(NEVER, U256::from);
        let request = if user.is_none() {
            // Public: keep the other permission as it is.
            let current = self.permissions(stream, Address::ZERO).await?;
            let (publish, subscribe) = match access {
                Access::Publish => (until, current.subscribeExpiration),
                Access::Subscribe => (current.publishExpiration, until),
            };
            self.contract().setPublicPermission(stream.to_string(), publish, subscribe).into_transaction_request()
        } else if until == NEVER {
            self.contract().grantPermission(stream.to_string(), who, access.permission_type()).into_transaction_request()
        } else {
            self.contract().setExpirationTime(stream.to_string(), who, access.permission_type(), until).into_transaction_request()
        };
        self.chain.send(&format!("grant {access:?} on {stream} to {who:#x}"), request).await
    }

    /// Takes `access` from `user` (`None`: from everyone, i.e. makes it non-public).
    pub async fn revoke(&self, stream: &str, user: Option<Address>, access: Access) -> Result<TransactionReceipt, ChainError> {
        let who = user.unwrap_or(Address::ZERO);
        let request = self.contract().revokePermission(stream.to_string(), who, access.permission_type()).into_transaction_request();
        self.chain.send(&format!("revoke {access:?} on {stream} from {who:#x}"), request).await
    }

    /// `user`'s permissions on `stream` as the contract reports them (public ones included).
    pub async fn permissions(&self, stream: &str, user: Address) -> Result<IStreamRegistry::Permission, ChainError> {
        self.contract()
            .getPermissionsForUser(stream.to_string(), user)
            .call()
            .await
            .map_err(|e| self.chain.rpc_error("StreamRegistry.getPermissionsForUser", e))
    }

    /// The stream's metadata, or `None` if it does not exist.
    pub async fn metadata(&self, stream: &str) -> Result<Option<String>, ChainError> {
        let exists =
            self.contract().exists(stream.to_string()).call().await.map_err(|e| self.chain.rpc_error("StreamRegistry.exists", e))?;
        if !exists {
            return Ok(None);
        }
        let metadata = self
            .contract()
            .getStreamMetadata(stream.to_string())
            .call()
            .await
            .map_err(|e| self.chain.rpc_error("StreamRegistry.getStreamMetadata", e))?;
        Ok(Some(metadata))
    }
}
