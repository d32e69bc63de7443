//! Latency statistics: an HdrHistogram with the percentiles the report uses.

use hdrhistogram::Histogram;

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Number of samples.
    pub samples: u64,
}

impl Percentiles {
    /// The same percentiles divided by `d` (e.g. 2 for one-way from round trip).
    pub fn scaled(self, d: f64) -> Percentiles {
        Percentiles {
            p50: self.p50 / d,
            p99: self.p99 / d,
            p999: self.p999 / d,
            samples: self.samples,
        }
    }
}

/// A nanosecond latency recorder (1 ns .. 10 s, 3 significant digits).
#[derive(Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty recorder.
    pub fn new() -> Latencies {
        Latencies(Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds"))
    }

    /// Records one sample in nanoseconds (clamped into the recorder's range).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// The percentiles of what was recorded.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.0.value_at_quantile(0.5) as f64,
            p99: self.0.value_at_quantile(0.99) as f64,
            p999: self.0.value_at_quantile(0.999) as f64,
            samples: self.0.len(),
        }
    }
}

/// Median of a slice of figures (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
