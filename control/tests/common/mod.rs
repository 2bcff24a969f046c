//! Helpers shared by the process tests of `runnel control` and peering: child processes
//! killed on drop, a private temporary directory, and reading a child's stderr lines.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

/// A child process killed on drop, so a failing test leaves nothing running.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 0700 directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir(label: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("runnel-{label}-test-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    TempDir(dir)
}

/// The lines a child writes to stderr, read on a thread.
pub fn stderr_lines(child: &mut Child) -> Receiver<String> {
    lines_of(child.stderr.take().unwrap())
}

/// The lines of a pipe, read on a thread (bounded: tests read as they go).
pub fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = sync_channel(4096);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Reads lines until each needle has been seen, in any order (two processes writing to one
/// pipe interleave), for at most `timeout`; returns the first line with each needle.
pub fn lines_with(lines: &Receiver<String>, needles: &[&str], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut found: Vec<Option<String>> = vec![None; needles.len()];
    while found.iter().any(Option::is_none) {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let missing: Vec<_> = needles.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| n).collect();
            panic!("no line with {missing:?} within {timeout:?}");
        };
        if let Some(slot) = needles.iter().zip(found.iter_mut()).find_map(|(n, f)| (f.is_none() && line.contains(n)).then_some(f)) {
            *slot = Some(line);
        }
    }
    found.into_iter().flatten().collect()
}
