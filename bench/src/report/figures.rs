//! Helpers of every section: a table row, one figure measured and recorded, medians of runs.

use std::time::Instant;

use anyhow::Result;

use super::{fmt_num, Report, Row};
use crate::stats::Percentiles;

pub(super) fn row(figure: &str, key: &str, unit: &str, reference: &str, verdict: String) -> Row {
    Row {
        figure: figure.to_owned(),
        key: Some(key.to_owned()),
        unit: unit.to_owned(),
        reference: reference.to_owned(),
        verdict,
    }
}

/// Runs `f`, recording its figure under `key`, or null with the error as the reason.
pub(super) fn measure(report: &mut Report, key: &str, what: &str, f: impl FnOnce() -> Result<f64>) {
    let t = Instant::now();
    print!("  {what} ... ");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    match f() {
        Ok(v) => {
            println!("{} ({:.1} s)", fmt_num(v), t.elapsed().as_secs_f64());
            report.set(key, v);
        }
        Err(e) => {
            println!("failed: {e:#}");
            report.missing(key, &format!("measurement failed: {e:#}"));
        }
    }
}

/// Per-percentile medians of several runs.
pub(super) fn median_p(runs: impl Iterator<Item = Percentiles>) -> Percentiles {
    let runs: Vec<_> = runs.collect();
    let med = |f: fn(&Percentiles) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        crate::stats::median(&mut v)
    };
    Percentiles {
        p50: med(|p| p.p50),
        p99: med(|p| p.p99),
        p999: med(|p| p.p999),
        samples: runs.iter().map(|p| p.samples).sum(),
    }
}

/// Median of `n` runs of a throughput measurement (the runs are short; the median resists a run
/// disturbed by another process on this shared machine).
pub(super) fn median_of(n: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut runs = (0..n).map(|_| f()).collect::<Result<Vec<_>>>()?;
    Ok(crate::stats::median(&mut runs))
}

/// The median of `values`, or None when there are none.
pub(super) fn median_of_values(mut values: Vec<f64>) -> Option<f64> {
    (!values.is_empty()).then(|| crate::stats::median(&mut values))
}
