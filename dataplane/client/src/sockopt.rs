//! The one `setsockopt` wrapper every socket in the project uses (node shards, the client
//! library, the benchmarks).

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Sets an integer socket option (`UDP_GRO`, `SO_RCVBUF`, `IP_RECVERR`, ...).
pub fn set_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int on the
    // stack whose size we pass, and the kernel copies it before returning.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
