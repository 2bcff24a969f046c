//! A local chain for tests and `runnel dev`: the anvil binary that `scripts/setup.sh`
//! installs from npm (`control/chain/npm`, pinned), started on a free loopback port,
//! auto-mining, and killed when the [`Anvil`] is dropped or its parent dies.

use crate::ChainError;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where `npm ci` in `control/chain/npm` puts the binary.
const NPM_ANVIL: &str = "npm/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";
/// How long anvil may take to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The anvil binary: `$RUNNEL_ANVIL`, else the npm install beside this crate's sources,
/// else `anvil` on `PATH`.
pub fn anvil_path() -> Result<PathBuf, ChainError> {
    if let Some(path) = std::env::var_os("RUNNEL_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    let npm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(NPM_ANVIL);
    if npm.exists() {
        return Ok(npm);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("anvil"))
        .find(|candidate| candidate.exists());
    on_path.ok_or_else(|| {
        ChainError::Setup(format!("no anvil binary: run scripts/setup.sh (it installs {}), or set RUNNEL_ANVIL", npm.display()))
    })
}

/// Options for [`Anvil::start`].
#[derive(Clone, Debug, Default)]
pub struct AnvilOptions {
    /// Port; `None` = any free port.
    pub port: Option<u16>,
    /// Seconds between blocks; `None` = a block per transaction (auto-mining).
    pub block_time: Option<u64>,
    /// The address to listen on; `None` = 127.0.0.1.
    pub host: Option<std::net::IpAddr>,
    /// Run inside this network namespace (`ip netns exec`), for tests whose nodes live in
    /// namespaces: the chain is then reachable from them at `host`, not from the caller.
    pub netns: Option<String>,
}

/// A running anvil; dropping it kills the process.
pub struct Anvil {
    child: Child,
    host: std::net::IpAddr,
    port: u16,
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Anvil {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anvil").field("pid", &self.child.id()).field("port", &self.port).finish()
    }
}

impl Anvil {
    /// Starts anvil and waits until it listens. Its dev accounts (funded with 10,000 ETH
    /// each) are read from its own banner: [`Anvil::dev_key`].
    pub fn start(options: &AnvilOptions) -> Result<Anvil, ChainError> {
        let path = anvil_path()?;
        let host = options.host.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let mut command = match &options.netns {
            Some(netns) => {
                // `ip netns exec` execs anvil in the same process: the death signal holds.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        command.args(["--host", &host.to_string(), "--port", &options.port.unwrap_or(0).to_string(), "--accounts", "10"]);
        if let Some(seconds) = options.block_time {
            command.args(["--block-time", &seconds.to_string()]);
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // The chain dies with whoever started it (a killed test, a killed `runnel dev`).
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| ChainError::Setup(format!("cannot start {}: {e}", path.display())))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        // Reads the banner, then keeps draining anvil's log so that it never blocks on a
        // full pipe.
        std::thread::Builder::new()
            .name("anvil-log".into())
            .spawn(move || {
                let mut keys = Vec::new();
                let mut in_keys = false;
                let mut ready = Some(ready_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Some(sender) = ready.as_ref() else { continue };
                    let trimmed = line.trim();
                    if trimmed.starts_with("Private Keys") {
                        in_keys = true;
                    } else if in_keys && trimmed.starts_with('(') {
                        if let Some(key) = trimmed.split_whitespace().nth(1).and_then(parse_key) {
                            keys.push(key);
                        }
                    } else if in_keys && !trimmed.is_empty() && !trimmed.starts_with('=') {
                        in_keys = false;
                    }
                    if let Some(address) = trimmed.strip_prefix("Listening on ") {
                        let port = address.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                        let _ = sender.send((port, std::mem::take(&mut keys)));
                        ready = None;
                    }
                }
            })
            .map_err(|e| ChainError::Setup(format!("cannot start the anvil log reader: {e}")))?;
        let (port, keys) = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok((Some(port), keys)) => (port, keys),
            Ok((None, _)) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChainError::Setup(format!("anvil ({}) printed no listening address within {START_TIMEOUT:?}", path.display())));
            }
        };
        if keys.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChainError::Setup("anvil printed no dev account keys".into()));
        }
        Ok(Anvil { child, host, port, keys })
    }

    /// Its JSON-RPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", std::net::SocketAddr::new(self.host, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key of dev account `index` (0..10), funded by anvil.
    pub fn dev_key(&self, index: usize) -> [u8; 32] {
        self.keys[index]
    }

    /// Stops the chain (its state is gone).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.strip_prefix("0x")?).ok()?;
    bytes.try_into().ok()
}
