//! Latency percentiles in fixed memory: a log-bucketed histogram (HDR-style).
//!
//! `runnel dev` records every delivery's latency for as long as it runs, so it cannot keep
//! the samples. Values below 256 µs get a bucket each; above, every power of two is split
//! into [`SUB_BUCKETS`] equal buckets, so a bucket is at most 1/128 (0.8 %) of its value
//! wide and a percentile is reported to within 0.4 % (the bucket's middle). 7424 buckets
//! cover all of `u64`: 58 KiB, whatever the count.
//!
//! Percentiles use the same rank as a sorted list would, `round((count - 1) × fraction)`.

/// Buckets per power of two above 256 µs.
pub const SUB_BUCKETS: u64 = 128;
const SUB_BUCKET_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// One bucket per value below SUB_BUCKETS, then SUB_BUCKETS per shift 0..=56 (7424).
const BUCKETS: usize = (SUB_BUCKETS + (u64::BITS - SUB_BUCKET_BITS) as u64 * SUB_BUCKETS) as usize;

#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0 }
    }
}

impl LatencyHistogram {
    fn index(value_us: u64) -> usize {
        if value_us < SUB_BUCKETS {
            return value_us as usize;
        }
        let shift = (u64::BITS - 1 - value_us.leading_zeros()) - SUB_BUCKET_BITS;
        let mantissa = (value_us >> shift) - SUB_BUCKETS;
        (SUB_BUCKETS + u64::from(shift) * SUB_BUCKETS + mantissa) as usize
    }

    /// The middle of bucket `index` (its value, below 256 µs).
    fn value_us(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return index;
        }
        let shift = (index - SUB_BUCKETS) / SUB_BUCKETS;
        let lowest = (SUB_BUCKETS + (index - SUB_BUCKETS) % SUB_BUCKETS) << shift;
        lowest + ((1u64 << shift) - 1) / 2
    }

    pub fn record(&mut self, value_us: u64) {
        self.counts[Self::index(value_us)] += 1;
        self.count += 1;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
    }

    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.count = 0;
    }

    /// The value at `fraction` (0.0..=1.0) of the samples; 0 when there are none.
    pub fn percentile_us(&self, fraction: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count - 1) as f64 * fraction.clamp(0.0, 1.0)).round() as u64;
        let mut below = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            below += count;
            if below > rank {
                return Self::value_us(index);
            }
        }
        unreachable!("count {} is the sum of the buckets", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::testing::Rng;

    fn sorted_percentile(sorted: &[u64], fraction: f64) -> u64 {
        sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
    }

    // Goal: every value maps to a bucket whose range holds it, buckets are in value order,
    // and the extremes of u64 fit.
    #[test]
    fn buckets_hold_their_values() {
        assert_eq!(LatencyHistogram::index(u64::MAX), BUCKETS - 1);
        let mut previous = 0;
        for value in (0..100_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let index = LatencyHistogram::index(value);
            assert!(index >= previous, "{value}: buckets out of order");
            previous = index;
            let middle = LatencyHistogram::value_us(index);
            if value < 2 * SUB_BUCKETS {
                assert_eq!(middle, value, "exact below 256");
            }
            assert!(middle.abs_diff(value) as f64 <= value as f64 / (2 * SUB_BUCKETS) as f64 + 0.5, "{value} → {middle}");
        }
    }

    // Goal: percentiles of random latency-like samples match a sorted list to within the
    // bucket precision; merge equals recording both sets. Replay with RUNNEL_SEED=<n>.
    #[test]
    fn percentiles_match_a_sorted_list() {
        let seed = runnel_proto::testing::seed(rand::random());
        let mut rng = Rng::new(seed);
        let (mut first, mut second, mut samples) = (LatencyHistogram::default(), LatencyHistogram::default(), Vec::new());
        for i in 0..200_000 {
            // Mostly around 1 ms, a tail to 100 ms, some tiny values.
            let value = match rng.below(10) {
                0 => rng.below(300),
                1 => rng.below(100_000),
                _ => 800 + rng.below(600),
            };
            if i % 2 == 0 { &mut first } else { &mut second }.record(value);
            samples.push(value);
        }
        first.merge(&second);
        assert_eq!(first.count(), samples.len() as u64);
        samples.sort_unstable();
        for fraction in [0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let (exact, estimate) = (sorted_percentile(&samples, fraction), first.percentile_us(fraction));
            assert!(exact.abs_diff(estimate) as f64 <= exact as f64 / 128.0 + 1.0, "seed {seed}: p{fraction}: {estimate} for {exact}");
        }
        first.clear();
        assert_eq!((first.count(), first.percentile_us(0.5)), (0, 0));
    }
}
