//! The process log: one line on stderr per call, written with a single `write(2)`.
//!
//! `eprintln!` writes each piece of its format separately (stderr is unbuffered), so the
//! lines of two processes sharing one stderr — the supervisor and its children — interleave
//! mid-line. A line formatted first and written whole is atomic on a pipe up to `PIPE_BUF`
//! (4096 bytes), which every log line fits.

use std::fmt;
use std::io::Write;

/// `logln!("runnel node: started the {name}")`: like `eprintln!`, but one write per line.
macro_rules! logln {
    () => {
        $crate::log::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::log::write_line(format_args!($($arg)*))
    };
}

pub(crate) fn write_line(args: fmt::Arguments<'_>) {
    let mut line = args.to_string();
    line.push('\n');
    // A closed stderr is not a reason to stop a node.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
