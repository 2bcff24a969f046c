//! `runnel control` beside `runnel node --ipc`: two real processes, a real unix socket, the
//! admin endpoint scraped over real HTTP.

use runnel_core::counters::Counter;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STREAM: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/control#0";
const TIMEOUT: Duration = Duration::from_secs(10);

mod common;

use common::{lines_with, stderr_lines, temp_dir, Process};

fn start_node(dir: &Path, socket: &Path) -> Process {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("node.toml");
    std::fs::write(&config, format!("[node]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["node", "--status-interval", "0", "--config"])
        .arg(&config)
        .arg("--ipc")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

/// Starts `runnel control` and returns it with its admin address (read from its stderr).
fn start_control(socket: &Path) -> (Process, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["control", "--admin", "127.0.0.1:0", "--join", STREAM, "--ipc"])
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("control prints its admin address").unwrap();
    let address = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {first:?}"));
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Process(child), address)
}

fn http(address: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

fn get(address: SocketAddr, path: &str) -> (u16, String) {
    http(address, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

/// The value of `runnel_<name>_total` in a metrics page.
fn metric(page: &str, name: &str) -> Option<u64> {
    let prefix = format!("runnel_{name}_total ");
    page.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|value| value.parse().ok())
}

/// Waits until control reports a connected dataplane with counters, and returns /metrics.
fn wait_connected(admin: SocketAddr) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = get(admin, "/status");
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if json["dataplane"]["connected"] == true && json["counters"].as_object().is_some_and(|c| !c.is_empty()) {
            let (status, page) = get(admin, "/metrics");
            assert_eq!(status, 200);
            return page;
        }
        assert!(Instant::now() < deadline, "control never connected: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Goal: control drives the dataplane process over its socket (its --join is a command the
// node answers), /metrics carries every dataplane counter and control's own in Prometheus
// form, /status is JSON; killing control leaves the dataplane running, and a new control
// reconnects and replays its state; the admin endpoint refuses other paths and methods.
#[test]
fn control_drives_the_dataplane_and_serves_status_and_metrics() {
    let dir = temp_dir("control");
    let socket = dir.0.join("dataplane.sock");
    let mut node = start_node(&dir.0, &socket);
    let (control, admin) = start_control(&socket);
    let page = wait_connected(admin);
    for counter in Counter::ALL {
        assert!(metric(&page, counter.name()).is_some(), "runnel_{}_total missing from /metrics", counter.name());
        assert!(page.contains(&format!("# HELP runnel_{}_total {}", counter.name(), counter.help())));
    }
    assert!(metric(&page, "runtime_loop_turns").is_some_and(|turns| turns > 0), "the node's loop turns");
    assert!(metric(&page, "commands_succeeded").is_some_and(|n| n >= 1), "the --join was a command the node answered");
    assert_eq!(metric(&page, "control_ipc_connects"), Some(1));
    assert!(metric(&page, "control_admin_requests").is_some_and(|n| n >= 1));

    // Control dies; the dataplane does not.
    drop(control);
    std::thread::sleep(Duration::from_millis(200));
    assert!(node.0.try_wait().unwrap().is_none(), "the dataplane outlives its control process");
    let (_control, admin) = start_control(&socket);
    let page = wait_connected(admin);
    assert!(metric(&page, "commands_submitted").is_some_and(|n| n >= 2), "the new control replayed its join");

    assert_eq!(get(admin, "/nope").0, 404);
    assert_eq!(http(admin, "POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(http(admin, "POST /status HTTP/1.1\r\n\r\n").0, 411, "a POST must say how long its body is");
    assert_eq!(http(admin, "garbage\r\n\r\n").0, 400);
}

fn pid_in(line: &str) -> libc::pid_t {
    line.split("(pid ").nth(1).and_then(|rest| rest.trim_end_matches(')').parse().ok()).unwrap_or_else(|| panic!("no pid in {line:?}"))
}

fn admin_in(line: &str) -> SocketAddr {
    line.split("http://").nth(1).and_then(|rest| rest.split_whitespace().next()).and_then(|t| t.parse().ok()).unwrap()
}

// Goal: `runnel node` with a [control] section supervises both processes: it starts the
// dataplane and the control process; SIGKILL either and it is restarted (one log line),
// control reconnects to a restarted dataplane and replays its join; SIGTERM stops all.
#[test]
fn runnel_node_supervises_the_dataplane_and_the_control_process() {
    let dir = temp_dir("control");
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.0.join("node.toml");
    let socket = dir.0.join("dataplane.sock");
    std::fs::write(
        &config,
        format!(
            "[node]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n[control]\nadmin = \"127.0.0.1:0\"\njoin = [\"{STREAM}\"]\nipc = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut supervisor = Process(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["node", "--status-interval", "0", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stderr_lines(&mut supervisor.0);
    // The control process writes to the same stderr as the supervisor: its "admin on" line
    // may come before the supervisor's "started" line.
    let started = lines_with(&lines, &["started the dataplane", "started the control process", "admin on http://"], TIMEOUT);
    let (dataplane, control, admin) = (pid_in(&started[0]), pid_in(&started[1]), admin_in(&started[2]));
    wait_connected(admin);

    // The control process dies: restarted, and drives the dataplane again.
    // SAFETY: kill(2) on a child of our child; no memory is involved.
    unsafe { libc::kill(control, libc::SIGKILL) };
    lines_with(&lines, &["the control process exited"], TIMEOUT).remove(0);
    let started = lines_with(&lines, &["started the control process", "admin on http://"], TIMEOUT);
    let (control, admin) = (pid_in(&started[0]), admin_in(&started[1]));
    wait_connected(admin);

    // The dataplane dies: restarted; the waiting control reconnects and replays its join.
    // SAFETY: as above.
    unsafe { libc::kill(dataplane, libc::SIGKILL) };
    lines_with(&lines, &["the dataplane exited"], TIMEOUT).remove(0);
    let restarted = pid_in(&lines_with(&lines, &["started the dataplane"], TIMEOUT).remove(0));
    assert_ne!(restarted, dataplane);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let page = wait_connected(admin);
        if metric(&page, "control_ipc_connects") == Some(2) && metric(&page, "commands_succeeded").is_some_and(|n| n >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "control did not reconnect to the restarted dataplane:\n{page}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM stops everything.
    // SAFETY: as above, on our own child.
    unsafe { libc::kill(supervisor.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + TIMEOUT;
    while supervisor.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the supervisor did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in [control, restarted] {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive || is_zombie(pid), "child {pid} outlived the supervisor");
    }
}

/// A process that exited but was not yet reaped by its (gone) parent's reaper.
fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|stat| stat.contains(") Z ")).unwrap_or(true)
}
