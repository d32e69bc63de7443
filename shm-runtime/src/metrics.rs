//! Per-model latency histograms and generation counters, kept by the server in the service
//! segment (one [`LaneMetrics`] per lane, after the lane headers) so that any process can read
//! them: `status --json`, `shm-runtime metrics`, a gateway's `/metrics`.
//!
//! A histogram has [`BUCKETS`] buckets: bucket `i < BUCKETS - 1` counts values of at most
//! 2^i microseconds (1 us, 2 us, 4 us ... 2^26 us = 67 s), the last one everything longer; plus
//! the sum of the values in nanoseconds and their count. Workers record a request after its final
//! answer is on its way, so the round trip does not wait for the bookkeeping.
//!
//! # Examples
//!
//! ```
//! use shm_runtime::{status, Client, GenerateOptions, ModelConfig, Server, ServerConfig};
//!
//! let name = format!("doc-metrics-{}", std::process::id());
//! let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
//! let client = Client::connect(&name)?;
//! client.generate("echo", "hello", &GenerateOptions::default())?;
//! // Counted once the answer has left: a moment after the client has it.
//! # std::thread::sleep(std::time::Duration::from_millis(50));
//! let m = &status(&name)?.lanes[0].metrics;
//! let p99 = m.end_to_end.quantile(0.99).expect("requests were counted");
//! println!("echo: p99 <= {:.0} us, {} tokens generated", p99 * 1e6, m.generated_tokens);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::FinishReason;

/// Buckets of a [`Histogram`]: 27 bounded ones (1 us to 2^26 us) and one for longer values.
///
/// # Examples
///
/// ```
/// use shm_runtime::metrics::{bucket_bound_seconds, BUCKETS};
/// assert_eq!(bucket_bound_seconds(BUCKETS - 2), 67.108864); // the longest bounded bucket
/// ```
pub const BUCKETS: usize = 28;

/// The upper bound of bucket `i` in seconds (`f64::INFINITY` for the last).
///
/// ```
/// use shm_runtime::metrics::{bucket_bound_seconds, BUCKETS};
/// assert_eq!(bucket_bound_seconds(0), 1e-6);
/// assert_eq!(bucket_bound_seconds(10), 1024e-6);
/// assert!(bucket_bound_seconds(BUCKETS - 1).is_infinite());
/// ```
pub fn bucket_bound_seconds(i: usize) -> f64 {
    if i + 1 >= BUCKETS {
        f64::INFINITY
    } else {
        1e-6 * (1u64 << i) as f64
    }
}

/// The bucket of a value of `ns` nanoseconds: the first whose bound is at least the value.
///
/// ```
/// use shm_runtime::metrics::bucket_of;
/// assert_eq!(bucket_of(0), 0);
/// assert_eq!(bucket_of(1_000), 0); // 1 us
/// assert_eq!(bucket_of(1_001), 1); // just over 1 us: the 2 us bucket
/// assert_eq!(bucket_of(3_000), 2); // 3 us: the 4 us bucket
/// assert_eq!(bucket_of(u64::MAX), 27);
/// ```
pub fn bucket_of(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        0
    } else {
        ((64 - (us - 1).leading_zeros()) as usize).min(BUCKETS - 1)
    }
}

/// A latency histogram in shared memory.
///
/// # Examples
///
/// ```
/// use shm_runtime::metrics::Histogram;
///
/// // In the segment it is zeroed shared memory; all-zero atomics are an empty histogram.
/// // SAFETY: Histogram is atomics only, for which all-zero bytes are a valid value.
/// let h: Histogram = unsafe { std::mem::zeroed() };
/// h.record(3_000); // 3 us
/// h.record(900_000); // 0.9 ms
/// let s = h.snapshot();
/// assert_eq!((s.count, s.sum_ns), (2, 903_000));
/// assert_eq!((s.buckets[2], s.buckets[10]), (1, 1));
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct Histogram {
    /// Values per bucket (not cumulative).
    pub buckets: [AtomicU64; BUCKETS],
    /// Sum of the values, nanoseconds.
    pub sum_ns: AtomicU64,
    /// Number of values.
    pub count: AtomicU64,
}

impl Histogram {
    /// Records a value of `ns` nanoseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// # // SAFETY: atomics only; all-zero bytes are an empty histogram.
    /// # let h: shm_runtime::metrics::Histogram = unsafe { std::mem::zeroed() };
    /// h.record(1_500);
    /// assert_eq!(h.snapshot().buckets[1], 1); // 1.5 us: the 2 us bucket
    /// ```
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counts (each read once; a value being recorded may be half in).
    ///
    /// # Examples
    ///
    /// ```
    /// # // SAFETY: atomics only; all-zero bytes are an empty histogram.
    /// # let h: shm_runtime::metrics::Histogram = unsafe { std::mem::zeroed() };
    /// h.record(40_000);
    /// let s = h.snapshot();
    /// assert_eq!(s.quantile(0.5), Some(64e-6));
    /// ```
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// The metrics of one lane (one model).
///
/// # Examples
///
/// Read from a running service with [`status`](crate::status):
///
/// ```
/// use shm_runtime::{status, Client, ModelConfig, Server, ServerConfig};
///
/// let name = format!("doc-lane-metrics-{}", std::process::id());
/// let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
/// Client::connect(&name)?.embed("echo", &["hi"])?;
/// let m = &status(&name)?.lanes[0].metrics;
/// assert!(m.end_to_end.count >= 1); // the warm-up request counts too
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct LaneMetrics {
    /// From acceptance to the start of its run.
    pub queue: Histogram,
    /// From the start of its run to its final answer.
    pub run: Histogram,
    /// From acceptance to its final answer (the server's share of the round trip).
    pub end_to_end: Histogram,
    /// Generations: from the start of the run to the first token (as the backend measured).
    pub time_to_first_token: Histogram,
    /// Generations: the mean time between two tokens after the first, one value per generation.
    pub inter_token: Histogram,
    /// Prompt tokens of the generations.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Generations by finish reason: length, stop, cancelled, timeout.
    pub finish: [AtomicU64; 4],
}

/// The finish reasons in the order of [`LaneMetrics::finish`].
///
/// # Examples
///
/// ```
/// use shm_runtime::metrics::FINISH_REASONS;
/// assert_eq!(FINISH_REASONS, ["length", "stop", "cancelled", "timeout"]);
/// ```
pub const FINISH_REASONS: [&str; 4] = ["length", "stop", "cancelled", "timeout"];

impl LaneMetrics {
    /// Records a request that ran: accepted at `accepted_ns`, started at `started_ns`, answered at
    /// `now_ns` (one clock).
    ///
    /// # Examples
    ///
    /// ```
    /// # // SAFETY: atomics only; all-zero bytes are empty metrics.
    /// # let m: shm_runtime::metrics::LaneMetrics = unsafe { std::mem::zeroed() };
    /// m.record_request(1_000, 3_000, 10_000);
    /// let s = m.snapshot();
    /// assert_eq!((s.queue.sum_ns, s.run.sum_ns, s.end_to_end.sum_ns), (2_000, 7_000, 9_000));
    /// ```
    pub fn record_request(&self, accepted_ns: u64, started_ns: u64, now_ns: u64) {
        self.queue.record(started_ns.saturating_sub(accepted_ns));
        self.run.record(now_ns.saturating_sub(started_ns));
        self.end_to_end.record(now_ns.saturating_sub(accepted_ns));
    }

    /// Records a finished generation: its token counts, its time to first token and total time in
    /// microseconds (as its backend measured), and why it ended.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{FinishReason, Usage};
    /// # // SAFETY: atomics only; all-zero bytes are empty metrics.
    /// # let m: shm_runtime::metrics::LaneMetrics = unsafe { std::mem::zeroed() };
    /// let usage = Usage { prompt_tokens: 7, generated_tokens: 5, ttft_us: 80_000, total_us: 120_000 };
    /// m.record_generation(&usage, FinishReason::Stop);
    /// let s = m.snapshot();
    /// assert_eq!((s.prompt_tokens, s.generated_tokens), (7, 5));
    /// assert_eq!(s.inter_token.sum_ns, 10_000_000); // (120 - 80) ms over 4 gaps
    /// assert!(s.finish.contains(&("stop".to_owned(), 1)));
    /// ```
    pub fn record_generation(&self, usage: &crate::protocol::Usage, finish: FinishReason) {
        self.prompt_tokens
            .fetch_add(u64::from(usage.prompt_tokens), Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(u64::from(usage.generated_tokens), Ordering::Relaxed);
        let i = match finish {
            FinishReason::Length => 0,
            FinishReason::Stop => 1,
            FinishReason::Cancelled => 2,
            FinishReason::Timeout => 3,
        };
        self.finish[i].fetch_add(1, Ordering::Relaxed);
        if usage.generated_tokens > 0 {
            self.time_to_first_token
                .record(usage.ttft_us.saturating_mul(1000));
        }
        if usage.generated_tokens > 1 {
            let rest_us = usage.total_us.saturating_sub(usage.ttft_us);
            self.inter_token
                .record(rest_us.saturating_mul(1000) / u64::from(usage.generated_tokens - 1));
        }
    }

    /// A copy of every figure.
    ///
    /// # Examples
    ///
    /// ```
    /// # // SAFETY: atomics only; all-zero bytes are empty metrics.
    /// # let m: shm_runtime::metrics::LaneMetrics = unsafe { std::mem::zeroed() };
    /// let s = m.snapshot();
    /// assert_eq!(s.end_to_end.count, 0);
    /// assert_eq!(s.finish.len(), 4);
    /// ```
    pub fn snapshot(&self) -> LaneMetricsSnapshot {
        LaneMetricsSnapshot {
            queue: self.queue.snapshot(),
            run: self.run.snapshot(),
            end_to_end: self.end_to_end.snapshot(),
            time_to_first_token: self.time_to_first_token.snapshot(),
            inter_token: self.inter_token.snapshot(),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: self.generated_tokens.load(Ordering::Relaxed),
            finish: FINISH_REASONS
                .iter()
                .zip(&self.finish)
                .map(|(name, n)| ((*name).to_owned(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// A histogram as read (see [`Histogram`]).
///
/// # Examples
///
/// ```
/// # // SAFETY: atomics only; all-zero bytes are an empty histogram.
/// # let h: shm_runtime::metrics::Histogram = unsafe { std::mem::zeroed() };
/// h.record(2_000_000);
/// let s = h.snapshot();
/// assert_eq!(s.buckets.iter().sum::<u64>(), s.count);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistogramSnapshot {
    /// Values per bucket, not cumulative; bucket `i` ends at [`bucket_bound_seconds`]`(i)`.
    pub buckets: Vec<u64>,
    /// Sum of the values, nanoseconds.
    pub sum_ns: u64,
    /// Number of values.
    pub count: u64,
}

impl HistogramSnapshot {
    /// The bound of the bucket holding quantile `q` (0..=1), in seconds: an upper estimate within
    /// a factor of 2; `None` without values.
    ///
    /// ```
    /// use shm_runtime::metrics::HistogramSnapshot;
    /// let mut buckets = vec![0; 28];
    /// buckets[3] = 90; // 90 values of 4-8 us
    /// buckets[10] = 10; // 10 of 0.5-1 ms
    /// let h = HistogramSnapshot { buckets, sum_ns: 0, count: 100 };
    /// assert_eq!(h.quantile(0.5), Some(8e-6));
    /// assert_eq!(h.quantile(0.99), Some(1024e-6));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_bound_seconds(i));
            }
        }
        None
    }
}

/// Every figure of a [`LaneMetrics`], as read.
///
/// # Examples
///
/// ```
/// # // SAFETY: atomics only; all-zero bytes are empty metrics.
/// # let m: shm_runtime::metrics::LaneMetrics = unsafe { std::mem::zeroed() };
/// let s = m.snapshot();
/// let json = serde_json::to_value(&s)?; // as `status --json` shows it
/// assert_eq!(json["generated_tokens"], 0);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaneMetricsSnapshot {
    /// From acceptance to the start of the run.
    pub queue: HistogramSnapshot,
    /// The run.
    pub run: HistogramSnapshot,
    /// From acceptance to the final answer.
    pub end_to_end: HistogramSnapshot,
    /// Generations: time to first token.
    pub time_to_first_token: HistogramSnapshot,
    /// Generations: mean time between tokens, one value per generation.
    pub inter_token: HistogramSnapshot,
    /// Prompt tokens of the generations.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Generations by finish reason.
    pub finish: Vec<(String, u64)>,
}
