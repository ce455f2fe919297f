//! Percentiles and histograms of latency samples.

use std::time::Duration;

/// Latency samples in milliseconds, sorted once.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted_ms: Vec<f64>,
}

impl Samples {
    pub fn new(durations: impl IntoIterator<Item = Duration>) -> Self {
        let mut sorted_ms: Vec<f64> = durations
            .into_iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        sorted_ms.sort_unstable_by(f64::total_cmp);
        Self { sorted_ms }
    }

    pub fn len(&self) -> usize {
        self.sorted_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted_ms.is_empty()
    }

    /// The nearest-rank percentile (`p` in 0..=1), rounded to 0.01 ms; 0 without samples.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.sorted_ms.is_empty() {
            return 0.0;
        }
        let rank = (p.clamp(0.0, 1.0) * self.sorted_ms.len() as f64).ceil() as usize;
        round2(self.sorted_ms[rank.clamp(1, self.sorted_ms.len()) - 1])
    }

    pub fn p50(&self) -> f64 {
        self.percentile(0.50)
    }

    pub fn p99(&self) -> f64 {
        self.percentile(0.99)
    }

    pub fn max(&self) -> f64 {
        self.sorted_ms.last().copied().map_or(0.0, round2)
    }

    pub fn min(&self) -> f64 {
        self.sorted_ms.first().copied().map_or(0.0, round2)
    }

    /// Counts per bucket of a logarithmic scale covering the samples.
    pub fn histogram(&self, buckets: usize) -> Histogram {
        let buckets = buckets.max(1);
        let (Some(&lo), Some(&hi)) = (self.sorted_ms.first(), self.sorted_ms.last()) else {
            return Histogram::default();
        };
        // Log scale: latencies span orders of magnitude; floor at 10 µs.
        let lo = lo.max(0.01);
        let hi = hi.max(lo * 1.01);
        let (llo, lhi) = (lo.ln(), hi.ln());
        let width = (lhi - llo) / buckets as f64;
        let edges: Vec<f64> = (0..=buckets)
            .map(|i| (llo + width * i as f64).exp())
            .collect();
        let mut counts = vec![0u64; buckets];
        for &v in &self.sorted_ms {
            let i = if v <= lo {
                0
            } else {
                (((v.ln() - llo) / width) as usize).min(buckets - 1)
            };
            counts[i] += 1;
        }
        Histogram { edges, counts }
    }
}

/// Bucket edges (ms, one more than counts) and counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Samples {
        Samples::new(v.iter().map(|&m| Duration::from_millis(m)))
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(s.p50(), 50.0);
        assert_eq!(s.p99(), 99.0);
        assert_eq!(s.max(), 100.0);
        assert_eq!(s.percentile(0.0), 1.0);
        assert_eq!(ms(&[]).p99(), 0.0);
        assert_eq!(ms(&[7]).p50(), 7.0);
    }

    #[test]
    fn histogram_counts_every_sample() {
        let s = ms(&[1, 2, 2, 3, 10, 100, 1000]);
        let h = s.histogram(8);
        assert_eq!(h.counts.len(), 8);
        assert_eq!(h.edges.len(), 9);
        assert_eq!(h.counts.iter().sum::<u64>(), 7);
        assert_eq!(*h.counts.last().unwrap(), 1);
        assert!(ms(&[]).histogram(8).counts.is_empty());
    }
}
