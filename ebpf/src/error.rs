//! [`XdpError`]: everything that can go wrong loading, attaching and feeding the filter, each
//! with a message that says what to do about it.

use crate::AttachMode;
use std::error::Error;
use std::fmt;
use std::io;

/// Why an [`XdpFilter`](crate::XdpFilter) operation failed. Every variant is something the
/// operator or the environment can cause (privileges, kernel, interface, map capacity), never
/// a bug, so the node reports it and carries on with the userspace filter.
#[derive(Debug)]
pub enum XdpError {
    /// The process may not use BPF (or, before 5.11, its locked-memory limit is too low).
    PermissionDenied {
        /// What was being done, e.g. "loading the XDP filter".
        operation: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// The kernel refused the program or its maps for a reason other than privileges
    /// (kernel too old, BPF disabled, verifier rejection). `message` carries the kernel's
    /// reason and, for a verifier rejection, the verifier log.
    Load {
        /// What aya and the kernel reported.
        message: String,
    },
    /// No network interface has this name.
    UnknownInterface {
        /// The name asked for.
        interface: String,
    },
    /// The interface's driver has no native XDP.
    NativeUnsupported {
        /// The interface.
        interface: String,
    },
    /// The interface already runs an XDP program this filter cannot replace (another
    /// program, or one in the other mode).
    InterfaceBusy {
        /// The interface.
        interface: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// This filter is already attached; it attaches to one interface at a time.
    AlreadyAttached {
        /// Where it is attached.
        interface: String,
    },
    /// Attaching failed for another reason.
    Attach {
        /// The interface.
        interface: String,
        /// The mode asked for.
        mode: AttachMode,
        /// What aya and the kernel reported.
        message: String,
    },
    /// A map is at its `max_entries`.
    MapFull {
        /// The map's name (docs/xdp-filter.md "Maps").
        map: &'static str,
        /// Its capacity.
        max_entries: u32,
    },
    /// A map operation failed for another reason.
    Map {
        /// The map's name.
        map: &'static str,
        /// "insert", "remove", "read" or "iterate".
        operation: &'static str,
        /// What aya and the kernel reported.
        message: String,
    },
    /// A [`LinkEntry`](crate::LinkEntry) role that is neither
    /// [`ROLE_NEIGHBOR`](crate::ROLE_NEIGHBOR) nor [`ROLE_CLIENT`](crate::ROLE_CLIENT).
    InvalidRole {
        /// The role given.
        role: u32,
    },
    /// `BPF_PROG_TEST_RUN` refused the packet or failed.
    TestRun {
        /// What aya and the kernel reported.
        message: String,
    },
}

impl fmt::Display for XdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpError::PermissionDenied { operation, source } => write!(
                f,
                "{operation}: {source}: needs root or CAP_BPF+CAP_NET_ADMIN (kernels before 5.11 also need a higher \
                 `ulimit -l`); without them the node runs the same checks in userspace"
            ),
            XdpError::Load { message } => write!(
                f,
                "the kernel refused the XDP filter ({message}); it needs Linux 5.12 or later with BPF enabled; \
                 the node runs the same checks in userspace meanwhile"
            ),
            XdpError::UnknownInterface { interface } => {
                write!(f, "no network interface named {interface:?}: check the name with `ip link`")
            }
            XdpError::NativeUnsupported { interface } => write!(
                f,
                "interface {interface} has no native XDP: use generic mode (AttachMode::Generic); its driver does not \
                 run XDP programs itself"
            ),
            XdpError::InterfaceBusy { interface, source } => write!(
                f,
                "interface {interface} already runs an XDP program ({source}): remove it with \
                 `ip link set dev {interface} xdp off` (or `xdpgeneric off`) if it is a stale one, or attach in the same mode"
            ),
            XdpError::AlreadyAttached { interface } => {
                write!(f, "the XDP filter is already attached to {interface}: detach it first")
            }
            XdpError::Attach { interface, mode, message } => {
                write!(f, "attaching the XDP filter to {interface} in {mode:?} mode failed: {message}")
            }
            XdpError::MapFull { map, max_entries } => write!(
                f,
                "BPF map `{map}` is full ({max_entries} entries): remove stale entries first, or raise its max_entries \
                 in runnel_filter.c"
            ),
            XdpError::Map { map, operation, message } => write!(f, "BPF map `{map}`: {operation} failed: {message}"),
            XdpError::InvalidRole { role } => {
                write!(f, "link role {role} is not ROLE_NEIGHBOR (0) or ROLE_CLIENT (1)")
            }
            XdpError::TestRun { message } => write!(
                f,
                "BPF_PROG_TEST_RUN failed: {message} (XDP test packets must be 14 bytes to about 3.5 KiB, one page \
                 minus head- and tailroom)"
            ),
        }
    }
}

impl Error for XdpError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            XdpError::PermissionDenied { source, .. } | XdpError::InterfaceBusy { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The first OS error code in `error`'s source chain, if any.
pub(crate) fn os_error(error: &(dyn Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if let Some(code) = io_error.raw_os_error() {
                return Some(code);
            }
        }
        if let Some(netlink) = error.downcast_ref::<aya::sys::NetlinkError>() {
            if let Some(code) = netlink.raw_os_error() {
                return Some(code);
            }
        }
        current = error.source();
    }
    None
}

/// `error` and its sources as one line, without repeating a source whose text its parent
/// already includes (aya's transparent wrappers print their inner error).
pub(crate) fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = source.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the messages an operator sees say what to do, not only what failed.
    #[test]
    fn messages_say_what_to_do() {
        let denied =
            XdpError::PermissionDenied { operation: "loading the XDP filter".into(), source: io::Error::from_raw_os_error(libc::EPERM) };
        assert!(denied.to_string().contains("needs root or CAP_BPF+CAP_NET_ADMIN"), "{denied}");
        let native = XdpError::NativeUnsupported { interface: "lo".into() };
        assert!(native.to_string().contains("interface lo has no native XDP"), "{native}");
        assert!(native.to_string().contains("use generic"), "{native}");
        let full = XdpError::MapFull { map: "ports", max_entries: 256 };
        assert!(full.to_string().contains("`ports` is full (256 entries)"), "{full}");
    }

    // Goal: OS error codes are found however deep aya nests them.
    #[test]
    fn os_error_walks_the_chain() {
        let inner = io::Error::from_raw_os_error(libc::E2BIG);
        let wrapped = aya::sys::SyscallError { call: "bpf_map_update_elem", io_error: inner };
        let map_error = aya::maps::MapError::from(wrapped);
        assert_eq!(os_error(&map_error), Some(libc::E2BIG));
        assert!(describe(&map_error).contains("Argument list too long"), "{}", describe(&map_error));
    }
}
