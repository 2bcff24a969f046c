//! The small HTTP/1.1 server behind the control process's admin endpoint (`GET /status`,
//! `GET /metrics`, `GET /settlement/reports`) and the settlement operator's (`runnel
//! operator`: `POST /reports`, `GET /earnings/<account>`, `GET /status`).
//!
//! Std sockets, one request per connection (`Connection: close`), a request head of at most
//! [`REQUEST_HEAD_MAX`] bytes and a body of at most [`REQUEST_BODY_MAX`] (POST only, sized by
//! `Content-Length`), all read within [`REQUEST_TIMEOUT`]; only `GET` and `POST`. Anything
//! else is answered 400, 404, 405, 411 or 413 and closed. A web framework would add far more
//! code than these few pages need.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest request head (request line and headers) read.
pub const REQUEST_HEAD_MAX: usize = 8 * 1024;
/// Longest request body taken (a traffic report is at most 53,344 bytes).
pub const REQUEST_BODY_MAX: usize = 64 * 1024;
/// A client that has not sent its whole request within this is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    /// The target without its query string.
    pub path: String,
    /// The body's length (0 for GET and for a POST without a body).
    pub content_length: usize,
}

/// A whole request.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request is refused, with the HTTP status to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    LengthRequired,
    PayloadTooLarge,
}

impl Refusal {
    fn status_line(&self) -> &'static str {
        match self {
            Refusal::BadRequest => "400 Bad Request",
            Refusal::NotFound => "404 Not Found",
            Refusal::MethodNotAllowed => "405 Method Not Allowed",
            Refusal::LengthRequired => "411 Length Required",
            Refusal::PayloadTooLarge => "413 Payload Too Large",
        }
    }
}

/// What a handler answers.
#[derive(Debug)]
pub struct Response {
    pub status: &'static str,
    pub body: String,
    pub content_type: &'static str,
}

impl Response {
    pub fn json(value: &serde_json::Value) -> Response {
        Response::json_with("200 OK", value)
    }

    /// A JSON body with another status (`"422 Unprocessable Content"`, …).
    pub fn json_with(status: &'static str, value: &serde_json::Value) -> Response {
        Response { status, body: value.to_string(), content_type: "application/json" }
    }

    /// Prometheus text exposition.
    pub fn metrics(body: String) -> Response {
        Response { status: "200 OK", body, content_type: "text/plain; version=0.0.4; charset=utf-8" }
    }

    pub fn refused(refusal: Refusal) -> Response {
        Response { status: refusal.status_line(), body: format!("{}\n", refusal.status_line()), content_type: "text/plain; charset=utf-8" }
    }
}

/// Parses a request head (bytes up to and including the blank line, or what arrived).
pub fn parse_head(head: &[u8]) -> Result<Head, Refusal> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").ok_or(Refusal::BadRequest)?;
    let text = std::str::from_utf8(&head[..end]).map_err(|_| Refusal::BadRequest)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::BadRequest);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(Refusal::BadRequest);
    }
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        _ => return Err(Refusal::MethodNotAllowed),
    };
    let mut content_length = None;
    for header in lines {
        let (name, value) = header.split_once(':').ok_or(Refusal::BadRequest)?;
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value.trim().parse().map_err(|_| Refusal::BadRequest)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(Refusal::BadRequest);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not taken: a sender can always say how long its body is.
            return Err(Refusal::LengthRequired);
        }
    }
    let content_length = match (method, content_length) {
        (Method::Get, None | Some(0)) => 0,
        (Method::Get, Some(_)) => return Err(Refusal::BadRequest),
        (Method::Post, None) => return Err(Refusal::LengthRequired),
        (Method::Post, Some(length)) if length > REQUEST_BODY_MAX => return Err(Refusal::PayloadTooLarge),
        (Method::Post, Some(length)) => length,
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Head { method, path, content_length })
}

/// Serves `listener` until `stop` is set; `handle` answers each whole request.
pub fn serve(listener: &TcpListener, stop: &AtomicBool, handle: impl Fn(&Request) -> Response) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A client's failure (timeout, reset) concerns that client only.
                let _ = answer(stream, &handle);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads more of the request into `buffer` before `deadline`; false at the end of the stream.
fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>, limit: usize, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 4096];
    let read = stream.read(&mut chunk[..limit.saturating_sub(buffer.len()).clamp(1, 4096)])?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read > 0)
}

fn answer(mut stream: TcpStream, handle: &impl Fn(&Request) -> Response) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buffer = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(at + 4);
        }
        if buffer.len() >= REQUEST_HEAD_MAX || !read_more(&mut stream, &mut buffer, REQUEST_HEAD_MAX, deadline)? {
            break None;
        }
    };
    let response = match head_end.ok_or(Refusal::BadRequest).and_then(|end| parse_head(&buffer[..end]).map(|head| (end, head))) {
        Err(refusal) => Response::refused(refusal),
        Ok((end, head)) => {
            let mut body = buffer.split_off(end);
            body.truncate(head.content_length);
            while body.len() < head.content_length {
                if !read_more(&mut stream, &mut body, head.content_length, deadline)? {
                    return Ok(());
                }
            }
            handle(&Request { method: head.method, path: head.path, body })
        }
    };
    let Response { status, body, content_type } = response;
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

    fn head(method: Method, path: &str, content_length: usize) -> Head {
        Head { method, path: path.to_string(), content_length }
    }

    // Goal: GET and POST heads parse (query strings ignored, a POST's length taken); other
    // methods, bodiless POSTs, oversized or chunked bodies and malformed heads are refused
    // with the right status.
    #[test]
    fn heads_and_refusals() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(head(Method::Get, "/metrics", 0)));
        assert_eq!(parse_head(b"GET /status?pretty=1 HTTP/1.0\r\n\r\n"), Ok(head(Method::Get, "/status", 0)));
        assert_eq!(parse_head(b"POST /reports HTTP/1.1\r\ncontent-length: 12\r\n\r\n"), Ok(head(Method::Post, "/reports", 12)));
        assert_eq!(parse_head(b"PUT /status HTTP/1.1\r\n\r\n"), Err(Refusal::MethodNotAllowed));
        assert_eq!(parse_head(b"POST /reports HTTP/1.1\r\n\r\n"), Err(Refusal::LengthRequired));
        assert_eq!(parse_head(b"POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(Refusal::LengthRequired));
        assert_eq!(parse_head(b"POST /r HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"), Err(Refusal::PayloadTooLarge));
        for bad in [
            &b""[..],
            b"GET /status",
            b"GET /status HTTP/1.1\r\n",
            b"GET  /status HTTP/1.1\r\n\r\n",
            b"GET /status SPDY\r\n\r\n",
            b"GET status HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"GET /s HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /s HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"POST /s HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST /s HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(Refusal::BadRequest), "{bad:?}");
        }
    }

    // Goal: a whole exchange over a real socket: a POST's body reaches the handler in full,
    // the response carries the handler's status and body; a GET of an unknown page gets the
    // handler's 404.
    #[test]
    fn serves_posts_and_gets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                serve(&listener, &stop, |request| match (request.method, request.path.as_str()) {
                    (Method::Post, "/echo") => {
                        Response::json(&serde_json::json!({ "length": request.body.len(), "last": request.body.last() }))
                    }
                    _ => Response::refused(Refusal::NotFound),
                })
            });
            let exchange = |request: &[u8]| {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.write_all(request).unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                response
            };
            let body = vec![7u8; 20_000];
            let mut post = format!("POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            post.extend_from_slice(&body);
            let response = exchange(&post);
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
            assert!(response.ends_with(r#"{"last":7,"length":20000}"#), "{response}");
            assert!(exchange(b"GET /nothing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
            assert!(exchange(b"DELETE / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
            stop.store(true, Ordering::Release);
            server.join().unwrap().unwrap();
        });
    }

    // Goal: the head parser (network input) never panics: random bytes and random
    // mutations of valid heads, 200,000 of them, each give a head or a refusal.
    #[test]
    fn the_head_parser_takes_any_bytes() {
        let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        println!("RUNNEL_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let valid = b"POST /reports HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99\r\n\r\n".to_vec();
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
            if let Ok(head) = parse_head(&input) {
                assert!(head.content_length <= REQUEST_BODY_MAX && head.path.starts_with('/'));
            }
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
