//! `runnel dev`'s local chain: anvil on a free loopback port, the existing network's
//! StreamRegistryV5 and DATAv2, Runnel's settlement contract funded for the dev stream, and
//! the dev stream created on-chain with its permissions: Subscribe public (so anyone can
//! attach), Publish for `runnel dev`'s own publisher only. The nodes follow this registry,
//! so every client link and every published frame is checked against the chain.

use alloy::primitives::{Address, U256};
use runnel_chain::anvil::{Anvil, AnvilOptions};
use runnel_chain::contracts::{deploy_local, Deployment, IDataToken};
use runnel_chain::registry::{Access, Registry};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::settlement::Settlement;
use std::time::Instant;

/// The dev stream's path under anvil's account 0 (`DEV_STREAM` without its owner and part).
const DEV_STREAM_PATH: &str = "/runnel-dev";
/// DATA the sponsor (anvil's account 0) puts into the settlement pool: 1,000 DATA.
const SPONSORSHIP_DATA: u64 = 1_000;
/// Seconds between a root's commit and its first withdrawal.
const FREEZE_PERIOD_S: u64 = 60;

/// A running local chain with the contracts deployed and the dev stream set up.
pub struct LocalChain {
    anvil: Anvil,
    pub deployment: Deployment,
    pub settlement: Address,
    pub operator: Address,
    pub stream: String,
    /// The block of the last setup transaction: a node that has read it has every permission.
    pub ready_block: u64,
    pub setup_s: f64,
}

impl LocalChain {
    /// Starts anvil and deploys; `publisher` gets Publish on the dev stream.
    pub fn start(publisher: Address) -> Result<LocalChain, String> {
        let started = Instant::now();
        let anvil = Anvil::start(&AnvilOptions::default()).map_err(|e| format!("local chain: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("local chain: cannot start a runtime: {e}"))?;
        let (sponsor_key, operator_key) = (anvil.dev_key(0), anvil.dev_key(1));
        let endpoint = anvil.endpoint();
        let setup = runtime.block_on(async {
            let sponsor = Chain::connect(&endpoint, Some(&sponsor_key), ChainConfig::default())?;
            let operator = Chain::connect(&endpoint, Some(&operator_key), ChainConfig::default())?.sender()?;
            let deployment = deploy_local(&sponsor).await?;
            let registry = Registry::new(sponsor.clone(), deployment.registry);
            let (stream, _) = registry.create_stream(DEV_STREAM_PATH, 1).await?;
            registry.grant(&stream, None, Access::Subscribe, None).await?;
            registry.grant(&stream, Some(publisher), Access::Publish, None).await?;
            let (settlement, _) = Settlement::deploy(&sponsor, deployment.token, operator, FREEZE_PERIOD_S).await?;
            let amount = U256::from(SPONSORSHIP_DATA) * U256::from(10u64).pow(U256::from(18));
            let mint = IDataToken::new(deployment.token, sponsor.provider()).mint(sponsor.sender()?, amount).into_transaction_request();
            sponsor.send("mint DATA for the sponsor", mint).await?;
            let funding = settlement.fund(&stream, amount).await?;
            let ready_block = funding.fund.block_number.unwrap_or_default();
            Ok::<_, runnel_chain::ChainError>((deployment, settlement.address(), operator, stream, ready_block))
        });
        let (deployment, settlement, operator, stream, ready_block) = setup.map_err(|e| format!("local chain: {e}"))?;
        Ok(LocalChain { anvil, deployment, settlement, operator, stream, ready_block, setup_s: started.elapsed().as_secs_f64() })
    }

    pub fn endpoint(&self) -> String {
        self.anvil.endpoint()
    }

    /// The `[control]` lines that make a node follow this chain.
    pub fn control_config(&self) -> String {
        format!(
            "chain_rpc = \"{}\"\nregistry = \"{:#x}\"\nregistry_block = {}\n",
            self.endpoint(),
            self.deployment.registry,
            self.deployment.registry_block
        )
    }

    /// What the summary says of the chain.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint(),
            "registry": format!("{:#x}", self.deployment.registry),
            "token": format!("{:#x}", self.deployment.token),
            "settlement": format!("{:#x}", self.settlement),
            "settlement_operator": format!("{:#x}", self.operator),
            "stream": self.stream,
            "sponsorship_data": SPONSORSHIP_DATA,
            "ready_block": self.ready_block,
            "setup_s": self.setup_s,
        })
    }
}
