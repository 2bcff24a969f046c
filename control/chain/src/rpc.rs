//! The JSON-RPC client every chain read and write goes through (alloy, docs/decisions-chain.md).
//!
//! - Every request has a timeout ([`ChainConfig::rpc_timeout`]); a node that is down or
//!   silent is [`ChainError::Rpc`], never a hang.
//! - Every transaction waits for its receipt at most [`ChainConfig::tx_timeout`], and a
//!   reverted one is [`ChainError::Reverted`] with its hash.
//! - Nonces come from the node on every send (alloy's simple nonce manager): the default
//!   cached manager counts a nonce for a send that failed, which leaves a gap that stalls
//!   every later transaction of the account. One [`Chain`] sends one transaction at a time.

use crate::ChainError;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest;
use std::time::Duration;

/// Timeouts and polling of a [`Chain`].
#[derive(Clone, Debug)]
pub struct ChainConfig {
    /// One JSON-RPC request, connect included.
    pub rpc_timeout: Duration,
    /// From sending a transaction to its receipt.
    pub tx_timeout: Duration,
    /// How often a pending transaction's receipt is asked for.
    pub poll_interval: Duration,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig { rpc_timeout: Duration::from_secs(10), tx_timeout: Duration::from_secs(60), poll_interval: Duration::from_millis(50) }
    }
}

/// A connection to one chain node, with an account to send from (or read-only).
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    sender: Option<Address>,
    config: ChainConfig,
    endpoint: String,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("endpoint", &self.endpoint).field("sender", &self.sender).finish()
    }
}

impl Chain {
    /// Connects (lazily: nothing is sent until the first call) to `endpoint`, an `http://`
    /// or `https://` JSON-RPC URL; with `key`, transactions are signed by that account.
    pub fn connect(endpoint: &str, key: Option<&[u8; 32]>, config: ChainConfig) -> Result<Chain, ChainError> {
        let url: reqwest::Url =
            endpoint.parse().map_err(|e| ChainError::Setup(format!("chain endpoint {endpoint:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChainError::Setup(format!("chain endpoint {endpoint:?}: only http:// and https:// are supported")));
        }
        let http = reqwest::Client::builder()
            .timeout(config.rpc_timeout)
            .connect_timeout(config.rpc_timeout)
            .build()
            .map_err(|e| ChainError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let client = RpcClient::new_http_with_client(http, url).with_poll_interval(config.poll_interval);
        let builder = ProviderBuilder::default().with_gas_estimation().with_simple_nonce_management().fetch_chain_id();
        let (provider, sender) = match key {
            Some(key) => {
                let signer = PrivateKeySigner::from_bytes(&(*key).into())
                    .map_err(|e| ChainError::Setup(format!("the chain key is not a valid secp256k1 key: {e}")))?;
                let sender = signer.address();
                (builder.wallet(EthereumWallet::from(signer)).connect_client(client).erased(), Some(sender))
            }
            None => (builder.connect_client(client).erased(), None),
        };
        Ok(Chain { provider, sender, config, endpoint: endpoint.to_string() })
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The sending account; an error for a read-only connection.
    pub fn sender(&self) -> Result<Address, ChainError> {
        self.sender.ok_or_else(|| ChainError::Setup("this chain connection has no key to send transactions with".into()))
    }

    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// The latest block number.
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        self.provider.get_block_number().await.map_err(|e| self.rpc_error("eth_blockNumber", e))
    }

    /// Sends `request` from the account, waits for its receipt, and fails if it reverted.
    pub async fn send(&self, what: &str, request: TransactionRequest) -> Result<TransactionReceipt, ChainError> {
        let request = request.with_from(self.sender()?);
        let pending = self
            .provider
            .send_transaction(request)
            .await
            .map_err(|e| ChainError::Rejected { what: what.to_string(), reason: e.to_string() })?;
        let hash = *pending.tx_hash();
        let receipt = pending.with_timeout(Some(self.config.tx_timeout)).get_receipt().await.map_err(|e| ChainError::Pending {
            what: what.to_string(),
            hash,
            reason: e.to_string(),
        })?;
        if !receipt.status() {
            return Err(ChainError::Reverted { what: what.to_string(), hash });
        }
        Ok(receipt)
    }

    /// Deploys `code` (creation bytecode with any constructor arguments appended).
    pub async fn deploy(&self, what: &str, code: Bytes) -> Result<(Address, TransactionReceipt), ChainError> {
        let receipt = self.send(what, TransactionRequest::default().with_deploy_code(code)).await?;
        let address = receipt
            .contract_address
            .ok_or_else(|| ChainError::Rejected { what: what.to_string(), reason: "the receipt names no contract".into() })?;
        Ok((address, receipt))
    }

    /// Wraps a transport error of `method` as [`ChainError::Rpc`].
    pub fn rpc_error(&self, method: &str, error: impl std::fmt::Display) -> ChainError {
        ChainError::Rpc { endpoint: self.endpoint.clone(), method: method.to_string(), reason: error.to_string() }
    }
}
