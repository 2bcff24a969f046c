//! `runnel node --config FILE` with a `[control]` section: runs the dataplane and the control
//! process as two child processes and restarts whichever exits.
//!
//! ```toml
//! [control]
//! admin = "127.0.0.1:9464"                 # /status and /metrics
//! join = ["0x…/sensors#0"]                 # stream parts the control process joins
//! ipc = "/run/runnel/dataplane.sock"       # default: a private directory under /tmp
//! key_file = "/etc/runnel/node.key"        # identity (0600 key file or keystore): peering on
//! password_file = "/etc/runnel/password"   # for a keystore
//! p2p_listen = ["/ip4/0.0.0.0/tcp/7600"]
//! bootstrap = ["/ip4/10.0.0.1/tcp/7600/p2p/16Uiu2…"]
//! dataplane_address = "10.0.0.7:7700"      # what neighbors send to (default: [node] listen)
//! trust_peer_endpoints = false             # true: accept neighbor endpoints off their connection's IP
//! chain_rpc = "http://10.0.0.2:8545"       # permissions from the stream registry on this chain
//! registry = "0x…"                         # the StreamRegistry contract
//! registry_block = 0                       # its deployment block
//! chain_poll_ms = 250                      # how often the chain is read
//! settlement_epoch_s = 60                  # seconds per signed traffic report
//! settlement_operator = "http://10.0.0.9:7700"  # where each report is sent (`runnel operator`)
//! ```
//!
//! Environment overrides the file: `RUNNEL_ADMIN`, `RUNNEL_KEY_FILE`, `RUNNEL_PASSWORD_FILE`,
//! `RUNNEL_P2P_LISTEN` and `RUNNEL_BOOTSTRAP` (comma-separated), `RUNNEL_DATAPLANE_ADDRESS`,
//! `RUNNEL_CHAIN_RPC`, `RUNNEL_REGISTRY`, `RUNNEL_REGISTRY_BLOCK`, `RUNNEL_CHAIN_POLL_MS`
//! (a key set in the environment is not passed as a flag, so `runnel control` reads it).
//!
//! - The children are this same executable: `runnel node --ipc SOCK` (with `--ipc`, `runnel
//!   node` is the dataplane alone) and `runnel control --ipc SOCK`. They share the supervisor's stdout and stderr.
//! - A child that exits is restarted after a backoff (0.5 s, doubling to 30 s, back to
//!   0.5 s after a minute up), with one log line each time.
//! - Because the dataplane keeps its state and control replays its own, either may restart
//!   alone: a restarted control reconnects, a restarted dataplane is driven again by the
//!   control that waits for it.
//! - SIGINT/SIGTERM stops both: SIGTERM first, SIGKILL after 5 s. If the supervisor itself
//!   dies (even by SIGKILL), the kernel sends both children SIGTERM (`PR_SET_PDEATHSIG`).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child up this long has its backoff reset.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    #[serde(default = "default_admin")]
    admin: String,
    #[serde(default)]
    join: Vec<String>,
    ipc: Option<PathBuf>,
    key_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    p2p_listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    dataplane_address: Option<String>,
    #[serde(default)]
    trust_peer_endpoints: bool,
    chain_rpc: Option<String>,
    registry: Option<String>,
    registry_block: Option<u64>,
    chain_poll_ms: Option<u64>,
    settlement_epoch_s: Option<u64>,
    settlement_operator: Option<String>,
}

fn default_admin() -> String {
    "127.0.0.1:9464".into()
}

/// The `[control]` section of a node config file, if it has one.
pub fn control_section(path: &Path) -> Result<Option<toml::Table>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: invalid TOML: {e}", path.display()))?;
    match table.get("control") {
        None => Ok(None),
        Some(toml::Value::Table(section)) => Ok(Some(section.clone())),
        Some(_) => Err(format!("{}: `control` must be a table ([control])", path.display())),
    }
}

/// One supervised child: how to start it, and its restart state.
struct Supervised {
    name: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

impl Supervised {
    fn start(&mut self) -> Result<(), String> {
        let executable = std::env::current_exe().map_err(|e| format!("cannot find this executable to start the {}: {e}", self.name))?;
        let mut command = Command::new(executable);
        command.args(&self.args);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| format!("cannot start the {}: {e}", self.name))?;
        logln!("runnel node: started the {} (pid {})", self.name, child.id());
        self.child = Some(child);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    /// Notices an exit and schedules the restart; starts it when due.
    fn tend(&mut self) -> Result<(), String> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                if self.started.elapsed() >= HEALTHY_AFTER {
                    self.backoff = BACKOFF_MIN;
                }
                logln!("runnel node: the {} exited ({status}); restarting in {:.1} s", self.name, self.backoff.as_secs_f64());
                self.child = None;
                self.restart_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
        if self.restart_at.is_some_and(|at| Instant::now() >= at) {
            self.start()?;
        }
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }
}

pub fn run(config: &Path, section: toml::Table, status_interval: f64) -> Result<(), String> {
    let section: ControlSection = toml::Value::Table(section).try_into().map_err(|e| format!("{}: [control]: {e}", config.display()))?;
    // The dataplane checks its own sections; checking them here first gives the error
    // before any process starts.
    runnel_node::config::NodeConfig::load(config).map_err(|e| e.to_string())?;
    let (ipc, private_dir) = match section.ipc {
        Some(path) => (path, None),
        None => {
            let dir = std::env::temp_dir().join(format!("runnel-node-{}-{:016x}", std::process::id(), rand::random::<u64>()));
            std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
            (dir.join("dataplane.sock"), Some(dir))
        }
    };
    let config_text = config.display().to_string();
    let ipc_text = ipc.display().to_string();
    let mut dataplane_args = vec!["node".to_string(), "--config".into(), config_text, "--ipc".into(), ipc_text.clone()];
    dataplane_args.extend(["--status-interval".into(), status_interval.to_string()]);
    let mut control_args = vec!["control".to_string(), "--ipc".into(), ipc_text];
    // A key set in the environment wins over the file: leave the flag out, clap reads it.
    let mut flag = |env: &str, name: &str, values: Vec<String>| {
        if std::env::var_os(env).is_none() {
            for value in values {
                control_args.extend([format!("--{name}"), value]);
            }
        }
    };
    let path = |path: Option<PathBuf>| path.map(|p| p.display().to_string()).into_iter().collect::<Vec<_>>();
    flag("RUNNEL_ADMIN", "admin", vec![section.admin]);
    flag("RUNNEL_KEY_FILE", "key-file", path(section.key_file));
    flag("RUNNEL_PASSWORD_FILE", "password-file", path(section.password_file));
    flag("RUNNEL_P2P_LISTEN", "p2p-listen", section.p2p_listen);
    flag("RUNNEL_BOOTSTRAP", "bootstrap", section.bootstrap);
    flag("RUNNEL_DATAPLANE_ADDRESS", "dataplane-address", section.dataplane_address.into_iter().collect());
    flag("RUNNEL_CHAIN_RPC", "chain-rpc", section.chain_rpc.into_iter().collect());
    flag("RUNNEL_REGISTRY", "registry", section.registry.into_iter().collect());
    flag("RUNNEL_REGISTRY_BLOCK", "registry-block", section.registry_block.map(|b| b.to_string()).into_iter().collect());
    flag("RUNNEL_CHAIN_POLL_MS", "chain-poll-ms", section.chain_poll_ms.map(|ms| ms.to_string()).into_iter().collect());
    flag("RUNNEL_SETTLEMENT_EPOCH_S", "settlement-epoch-s", section.settlement_epoch_s.map(|s| s.to_string()).into_iter().collect());
    flag("RUNNEL_SETTLEMENT_OPERATOR", "settlement-operator", section.settlement_operator.clone().into_iter().collect());
    if section.trust_peer_endpoints && std::env::var_os("RUNNEL_TRUST_PEER_ENDPOINTS").is_none() {
        control_args.push("--trust-peer-endpoints".into());
    }
    for part in section.join {
        control_args.extend(["--join".into(), part]);
    }
    let mut children = [("dataplane", dataplane_args), ("control process", control_args)].map(|(name, args)| Supervised {
        name,
        args,
        child: None,
        started: Instant::now(),
        backoff: BACKOFF_MIN,
        restart_at: None,
    });
    let mut result = Ok(());
    for child in &mut children {
        if let Err(error) = child.start() {
            result = Err(error);
            break;
        }
    }
    while result.is_ok() && !crate::signals::stop_requested() {
        std::thread::sleep(Duration::from_millis(50));
        for child in &mut children {
            if let Err(error) = child.tend() {
                result = Err(error);
            }
        }
    }
    // Stop: control first (it would only reconnect), then the dataplane.
    for child in children.iter_mut().rev() {
        child.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while let Some(process) = &mut child.child {
            if process.try_wait().map(|status| status.is_some()).unwrap_or(true) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = process.kill();
                let _ = process.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dir) = private_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    logln!("runnel node: stopped");
    result
}

/// The child gets SIGTERM when the process that started it dies, however it dies (a
/// supervisor killed with SIGKILL must not leave its dataplane and control running).
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls: prctl(2) and getppid(2).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would signal us.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the parent exited before the child started"));
            }
            Ok(())
        });
    }
}
