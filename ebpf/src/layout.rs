//! The byte layouts of the BPF maps' keys and values, shared with `runnel_filter.c`.
//!
//! Each type here is the Rust twin of a C struct in docs/xdp-filter.md "Maps". Three checks
//! keep them in step: `_Static_assert`s on the C sizes, `const` asserts on the Rust sizes
//! below (the same numbers), and aya's key/value size check when [`crate::XdpFilter::load`]
//! opens each map (a mismatch fails the load, which every test exercises).

use aya::Pod;

/// Value of the `links` map (`struct link_entry`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkValue {
    /// Link key bytes 0..8 as a little-endian u64: SipHash k0.
    pub key0: u64,
    /// Link key bytes 8..16 as a little-endian u64: SipHash k1.
    pub key1: u64,
    pub emission_interval_ns: u64,
    pub burst_tolerance_ns: u64,
    /// GCRA theoretical arrival time; the program advances it atomically.
    pub tat_ns: u64,
    pub role: u32,
    pub pad: u32,
}

// SAFETY: #[repr(C)] with only integer fields laid out without padding (5 × 8 + 2 × 4 = 48
// bytes, asserted below), so every byte pattern is a valid value and no byte is uninitialised.
unsafe impl Pod for LinkValue {}

/// Key of the `permissions` map (`struct permission_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PermissionKey {
    pub part: [u8; 32],
    pub publisher: [u8; 20],
}

// SAFETY: #[repr(C)] of two byte arrays (alignment 1, 52 bytes, no padding); every byte
// pattern is valid.
unsafe impl Pod for PermissionKey {}

/// Key of the `replay` map (`struct replay_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplayKey {
    pub link_id: u32,
    /// Source port, host order.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    pub pad: u8,
    /// Source address; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

// SAFETY: #[repr(C)], integer and byte-array fields with no padding (4 + 2 + 1 + 1 + 16 = 24
// bytes, alignment 4, asserted below); every byte pattern is valid.
unsafe impl Pod for ReplayKey {}

/// Value of the `replay` map (`struct replay_window`). Userspace only deletes these; the
/// type exists so that the map opens with checked sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplayWindowValue {
    /// The program's try-lock word (0 free, 1 held).
    pub lock: u32,
    pub pad: u32,
    /// Highest accepted sequence + 1; 0 = nothing accepted.
    pub top: u64,
    pub bits: [u64; 16],
}

// SAFETY: #[repr(C)] with only integer fields and no padding (4 + 4 + 8 + 128 = 144 bytes,
// asserted below); every byte pattern is valid.
unsafe impl Pod for ReplayWindowValue {}

const _: () = {
    assert!(size_of::<LinkValue>() == 48);
    assert!(size_of::<PermissionKey>() == 52);
    assert!(size_of::<ReplayKey>() == 24);
    assert!(size_of::<ReplayWindowValue>() == 144);
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    // Goal: every field sits at the offset the C struct gives it (docs/xdp-filter.md "Maps"),
    // not just the total size: a swapped pair of u64s would keep the size and break the tag.
    #[test]
    fn field_offsets_match_the_c_layout() {
        assert_eq!(offset_of!(LinkValue, key0), 0);
        assert_eq!(offset_of!(LinkValue, key1), 8);
        assert_eq!(offset_of!(LinkValue, emission_interval_ns), 16);
        assert_eq!(offset_of!(LinkValue, burst_tolerance_ns), 24);
        assert_eq!(offset_of!(LinkValue, tat_ns), 32);
        assert_eq!(offset_of!(LinkValue, role), 40);
        assert_eq!(offset_of!(LinkValue, pad), 44);

        assert_eq!(offset_of!(PermissionKey, part), 0);
        assert_eq!(offset_of!(PermissionKey, publisher), 32);

        assert_eq!(offset_of!(ReplayKey, link_id), 0);
        assert_eq!(offset_of!(ReplayKey, port), 4);
        assert_eq!(offset_of!(ReplayKey, family), 6);
        assert_eq!(offset_of!(ReplayKey, addr), 8);

        assert_eq!(offset_of!(ReplayWindowValue, lock), 0);
        assert_eq!(offset_of!(ReplayWindowValue, top), 8);
        assert_eq!(offset_of!(ReplayWindowValue, bits), 16);
    }
}
