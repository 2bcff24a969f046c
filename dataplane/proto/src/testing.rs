//! Seeded randomness for tests and simulations: one small generator and one way to choose the
//! seed, printed so that any failure replays with `RUNNEL_SEED=<n>`.
//!
//! Not for anything but tests: xorshift64* is fast and deterministic, not unpredictable.

/// The seed from `RUNNEL_SEED`, else `default`; printed for replay.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    println!("RUNNEL_SEED={seed}");
    seed
}

/// xorshift64*: small, deterministic, good enough to drive packet simulators and generators.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is mapped to one, xorshift's fixed point).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with `probability` (0.0..=1.0).
    pub fn chance(&mut self, probability: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }

    /// One of `items` (non-empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}
