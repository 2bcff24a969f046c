//! The control process's admin HTTP endpoint: `GET /status` (JSON) and `GET /metrics`
//! (Prometheus text exposition).
//!
//! A deliberately small HTTP/1.1 server on std sockets: one request per connection
//! (`Connection: close`), a request head of at most [`REQUEST_HEAD_MAX`] bytes read within
//! [`REQUEST_TIMEOUT`], only `GET`. Anything else is answered 400, 404 or 405 and closed. It
//! serves operators and scrapers on a trusted address, not the public; a web framework
//! would add far more code than these two pages need.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest request head (request line and headers) read.
pub const REQUEST_HEAD_MAX: usize = 8 * 1024;
/// A client that has not sent its request head within this is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    Metrics,
    /// The node's signed traffic reports (control/src/traffic_reports.rs).
    SettlementReports,
}

/// Why a request head is refused, with the HTTP status to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
    MethodNotAllowed,
}

impl Refusal {
    fn status_line(&self) -> &'static str {
        match self {
            Refusal::BadRequest => "400 Bad Request",
            Refusal::NotFound => "404 Not Found",
            Refusal::MethodNotAllowed => "405 Method Not Allowed",
        }
    }
}

/// Parses a request head (bytes up to and including the blank line, or what arrived).
pub fn parse_request(head: &[u8]) -> Result<Route, Refusal> {
    let line_end = head.windows(2).position(|w| w == b"\r\n").ok_or(Refusal::BadRequest)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| Refusal::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::BadRequest);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refusal::BadRequest);
    }
    if method != "GET" {
        return Err(Refusal::MethodNotAllowed);
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/status" => Ok(Route::Status),
        "/metrics" => Ok(Route::Metrics),
        "/settlement/reports" => Ok(Route::SettlementReports),
        _ => Err(Refusal::NotFound),
    }
}

/// Serves `listener` until `stop` is set; `page` renders a route (body, content type).
pub fn serve(listener: &TcpListener, stop: &AtomicBool, page: impl Fn(&Route) -> (String, &'static str)) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A client's failure (timeout, reset) concerns that client only.
                let _ = answer(stream, &page);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream, page: &impl Fn(&Route) -> (String, &'static str)) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read.min(REQUEST_HEAD_MAX - head.len())]);
    }
    let (status, body, content_type) = match parse_request(&head) {
        Ok(route) => {
            let (body, content_type) = page(&route);
            ("200 OK", body, content_type)
        }
        Err(refusal) => (refusal.status_line(), format!("{}\n", refusal.status_line()), "text/plain; charset=utf-8"),
    };
    let response =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(response.as_bytes())
}

/// Prometheus text for `(name, value)` counters: `runnel_<name>_total` with `# HELP` (from
/// `help`) and `# TYPE … counter` lines.
pub fn prometheus(counters: &[(String, u64)], help: impl Fn(&str) -> String) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (name, value) in counters {
        let metric = format!("runnel_{}_total", sanitize(name));
        let _ = writeln!(out, "# HELP {metric} {}", help(name).replace('\n', " "));
        let _ = writeln!(out, "# TYPE {metric} counter");
        let _ = writeln!(out, "{metric} {value}");
    }
    out
}

/// A metric name keeps `[a-zA-Z0-9_]`; anything else becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    // Goal: the two routes parse (query strings ignored); other methods, paths and
    // malformed heads are refused with the right status.
    #[test]
    fn routes_and_refusals() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Route::Metrics));
        assert_eq!(parse_request(b"GET /status?pretty=1 HTTP/1.0\r\n\r\n"), Ok(Route::Status));
        assert_eq!(parse_request(b"POST /status HTTP/1.1\r\n\r\n"), Err(Refusal::MethodNotAllowed));
        assert_eq!(parse_request(b"GET /admin HTTP/1.1\r\n\r\n"), Err(Refusal::NotFound));
        for bad in [&b""[..], b"GET /status", b"GET  /status HTTP/1.1\r\n", b"GET /status SPDY\r\n", b"\xff\xfe\r\n"] {
            assert_eq!(parse_request(bad), Err(Refusal::BadRequest), "{bad:?}");
        }
    }

    // Goal: the request parser (network input) never panics: random bytes and random
    // mutations of valid heads, 200,000 of them, each give a route or a refusal.
    #[test]
    fn the_request_parser_takes_any_bytes() {
        let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        println!("RUNNEL_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let valid = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
        for round in 0..200_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
            } else {
                let mut input = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..input.len());
                    input[at] = rng.random();
                }
                input.truncate(rng.random_range(0..=input.len()));
                input
            };
            let _ = parse_request(&input);
        }
    }

    // Goal: Prometheus lines are well formed: HELP, TYPE counter, then the value.
    #[test]
    fn prometheus_text() {
        let text = prometheus(&[("frames_delivered".into(), 7), ("xdp_bad-tag".into(), 1)], |name| format!("help of {name}"));
        assert!(text.contains("# HELP runnel_frames_delivered_total help of frames_delivered\n"));
        assert!(text.contains("# TYPE runnel_frames_delivered_total counter\nrunnel_frames_delivered_total 7\n"));
        assert!(text.contains("runnel_xdp_bad_tag_total 1\n"));
    }
}
