//! Link rate limits: the GCRA (generic cell rate algorithm) parameters that both filters,
//! the XDP program and the userspace one, meter a link by (docs/xdp-filter.md "Rate limit").

/// GCRA parameters for a link (docs/xdp-filter.md "Rate limit"): the emission interval `T`
/// (ns per datagram, 0 = unlimited when the rate is 0) and the burst tolerance
/// `(burst - 1) × T`. The one place both filters get them from.
pub fn gcra_parameters(rate_datagrams_per_s: u64, burst_datagrams: u64) -> (u64, u64) {
    let emission_interval_ns = 1_000_000_000u64.checked_div(rate_datagrams_per_s).map_or(0, |interval| interval.max(1));
    (emission_interval_ns, burst_datagrams.saturating_sub(1).saturating_mul(emission_interval_ns))
}
