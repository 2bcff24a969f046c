//! `runnel node --config FILE` with a `[control]` section: runs the dataplane and the control
//! process as two child processes and restarts whichever exits.
//!
//! ```toml
//! [control]
//! admin = "127.0.0.1:9464"                 # /status and /metrics
//! join = ["0x…/sensors#0"]                 # stream parts the control process joins
//! ipc = "/run/runnel/dataplane.sock"       # default: a private directory under /tmp
//! ```
//!
//! - The children are this same executable: `runnel node --ipc SOCK` (with `--ipc`, `runnel
//!   node` is the dataplane alone) and `runnel control --ipc SOCK`. They share the supervisor's stdout and stderr.
//! - A child that exits is restarted after a backoff (0.5 s, doubling to 30 s, back to
//!   0.5 s after a minute up), with one log line each time.
//! - Because the dataplane keeps its state and control replays its own, either may restart
//!   alone: a restarted control reconnects, a restarted dataplane is driven again by the
//!   control that waits for it.
//! - SIGINT/SIGTERM stops both: SIGTERM first, SIGKILL after 5 s.

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
        let child = Command::new(executable).args(&self.args).spawn().map_err(|e| format!("cannot start the {}: {e}", self.name))?;
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
    let mut control_args = vec!["control".to_string(), "--ipc".into(), ipc_text, "--admin".into(), section.admin];
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
