//! Child processes the benchmarks start (a `nats-server`, Runnel nodes) and what they cost.
//!
//! Every server a benchmark measures runs as its own process so that its CPU time and memory
//! are read the same way for every system: [`ProcessSample`] reads `utime + stime` from
//! `/proc/PID/stat` and `VmRSS` from `/proc/PID/status`; CPU% over a phase is the tick delta
//! divided by the wall time.
//!
//! [`ChildGuard`] owns a child and kills it when dropped, so an early `?` return never leaves
//! a server running. Our release profile aborts on panic (no unwinding, no `Drop`), so each
//! child is also started with `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills it when the
//! thread that spawned it exits, abort included. Limit: that signal is tied to the spawning
//! *thread*, so children must be spawned by the thread that outlives them (the benchmark's
//! calling thread does).

use crate::BenchError;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) and reaped when this guard drops.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Starts `command` with stdin/stdout closed, stderr appended to `log`, and a parent-death
    /// signal, so it cannot outlive this process.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<ChildGuard, BenchError> {
        let log_file =
            std::fs::File::create(log).map_err(|e| BenchError::new(format!("cannot create log file {} for {name}: {e}", log.display())))?;
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log_file));
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
        // is async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| BenchError::new(format!("cannot start {name} ({command:?}): {e}")))?;
        Ok(ChildGuard { child, name: name.to_string() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the child's log if it has already exited.
    pub fn check_running(&mut self, log: &Path) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                Err(BenchError::new(format!("{} exited early ({status}); its log {} says: {}", self.name, log.display(), log_tail(log))))
            }
            Err(e) => Err(BenchError::new(format!("cannot poll {}: {e}", self.name))),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Errors mean it already exited; either way we reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last few hundred bytes of a log file, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].trim().to_string()
}

/// A free TCP port on 127.0.0.1 (bound, read, released; another process could take it in
/// between, which the server start then reports).
pub fn free_tcp_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| BenchError::new(format!("cannot bind a loopback TCP port: {e}")))?;
    Ok(listener.local_addr().map_err(|e| BenchError::new(e.to_string()))?.port())
}

/// The first of `count` consecutive free UDP ports on 127.0.0.1 (a node with `count` shards
/// listens on port..port+count).
pub fn free_udp_ports(count: u16) -> Result<u16, BenchError> {
    for _attempt in 0..64 {
        let first = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| BenchError::new(format!("cannot bind a loopback UDP port: {e}")))?;
        let port = first.local_addr().map_err(|e| BenchError::new(e.to_string()))?.port();
        if port as u32 + count as u32 > 65_535 {
            continue;
        }
        let rest: Vec<_> = (1..count).map(|i| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + i))).collect();
        if rest.iter().all(|socket| socket.is_ok()) {
            return Ok(port);
        }
    }
    Err(BenchError::new(format!("found no {count} consecutive free UDP ports on 127.0.0.1")))
}

/// Waits until something accepts TCP connections on `port`, up to `timeout`.
pub fn wait_for_tcp(port: u16, timeout: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::new(format!("nothing accepted connections on 127.0.0.1:{port} within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finds an executable: an explicit path, else `name` on PATH, else in the sbin directories
/// (Debian installs `nats-server` in /usr/sbin, which is not on every user's PATH).
pub fn find_executable(name: &str, explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(path) = explicit {
        return if path.is_file() { Ok(path.to_path_buf()) } else { Err(BenchError::new(format!("{} does not exist", path.display()))) };
    }
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/sbin"].map(PathBuf::from);
    path_dirs.iter().chain(extra.iter()).map(|dir| dir.join(name)).find(|candidate| candidate.is_file()).ok_or_else(|| {
        BenchError::new(format!("{name} not found on PATH or in /usr/sbin: install it (`apt-get install -y {name}`) or pass its path"))
    })
}

/// CPU time and memory of a process at one instant.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSample {
    pub at: Instant,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

impl ProcessSample {
    pub fn read(pid: u32) -> Result<ProcessSample, BenchError> {
        Self::read_from(&format!("/proc/{pid}"))
    }

    /// One thread of this process (its RSS is the process's).
    pub fn read_own_thread(tid: u32) -> Result<ProcessSample, BenchError> {
        Self::read_from(&format!("/proc/self/task/{tid}"))
    }

    fn read_from(dir: &str) -> Result<ProcessSample, BenchError> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("{dir}/stat")).map_err(|e| BenchError::new(format!("cannot read {dir}/stat: {e}")))?;
        // The command name (field 2) is in parentheses and may contain spaces: fields after
        // the last ')' start at field 3 (state); utime and stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |index: usize| fields.get(index - 3).and_then(|f| f.parse::<u64>().ok());
        let cpu_ticks = match (field(14), field(15)) {
            (Some(user), Some(system)) => user + system,
            _ => return Err(BenchError::new(format!("unexpected {dir}/stat format: {stat:?}"))),
        };
        let status =
            std::fs::read_to_string(format!("{dir}/status")).map_err(|e| BenchError::new(format!("cannot read {dir}/status: {e}")))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Ok(ProcessSample { at, cpu_ticks, rss_kib })
    }

    /// CPU use between two samples, in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcessSample) -> f64 {
        let wall_s = self.at.duration_since(earlier.at).as_secs_f64();
        // SAFETY: sysconf only reads a system constant.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        if wall_s <= 0.0 {
            return 0.0;
        }
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / ticks_per_s / wall_s * 100.0
    }
}

/// Samples of several processes (a relay chain's nodes) taken together.
pub fn sample_all(pids: &[u32]) -> Result<Vec<ProcessSample>, BenchError> {
    pids.iter().map(|&pid| ProcessSample::read(pid)).collect()
}

/// Sum of CPU% and RSS over matching samples of several processes.
pub fn cpu_and_rss(before: &[ProcessSample], after: &[ProcessSample]) -> (f64, u64) {
    let cpu = before.iter().zip(after).map(|(b, a)| a.cpu_percent_since(b)).sum();
    let rss = after.iter().map(|a| a.rss_kib).sum();
    (cpu, rss)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a spawned child is visible in /proc while guarded and gone once the guard drops;
    // a busy single-threaded child measures above zero and at most one core (the machine is
    // shared with other tests, so no tighter lower bound holds).
    #[test]
    fn guard_kills_child_and_samples_read() {
        let log = std::env::temp_dir().join(format!("runnel-bench-test-{}.log", std::process::id()));
        let mut command = Command::new("sh");
        command.args(["-c", "while :; do :; done"]);
        let mut guard = ChildGuard::spawn("busy loop", command, &log).unwrap();
        let pid = guard.pid();
        let before = ProcessSample::read(pid).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let after = ProcessSample::read(pid).unwrap();
        guard.check_running(&log).unwrap();
        let cpu = after.cpu_percent_since(&before);
        assert!(cpu > 1.0 && cpu < 110.0, "busy child used {cpu}% CPU");
        assert!(after.rss_kib > 0);
        drop(guard);
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty(), "child {pid} still exists: {state}");
        let _ = std::fs::remove_file(log);
    }
}
