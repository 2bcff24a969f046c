//! The one clock the filters use: `CLOCK_MONOTONIC`, the clock of the XDP program's
//! `bpf_ktime_get_ns`, so expiries written into BPF maps and compared in userspace mean the
//! same instant.

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock of `bpf_ktime_get_ns`, so expiries written into
/// the maps and compared in userspace mean the same instant.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the struct we pass.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "CLOCK_MONOTONIC is always available on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
