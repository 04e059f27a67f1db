//! Latency statistics and the report of one concurrency level.
//!
//! Percentiles interpolate linearly between the two closest ranks (numpy's default), so
//! numbers line up with vLLM's `benchmark_serving.py`, which the same servers are usually
//! measured with. Empty samples give NaN, which JSON writes as `null` and the table as `-`.

use serde::Serialize;

/// The `p`-th percentile (0..=100) of `sorted` (ascending), interpolated linearly between
/// ranks; NaN when `sorted` is empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Mean, median and tail of one latency (in milliseconds).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// How many samples the numbers come from.
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (any order; NaNs are dropped).
    pub fn of(samples: &[f64]) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        Self {
            count: v.len(),
            mean,
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// One request as the JSON report keeps it (the inter-token gaps only go into the level's
/// summary: a list per request would dwarf everything else at long outputs).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Time to the first non-empty text chunk; `None` for failures and empty outputs.
    pub ttft_ms: Option<f64>,
    /// Send to `[DONE]` (or to the failure).
    pub e2e_ms: f64,
    pub output_tokens: u64,
    /// `usage.prompt_tokens` when the server reported it.
    pub prompt_tokens: Option<u64>,
    /// Why the request failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// A distinct failure message and how many requests failed with it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub message: String,
    pub count: usize,
}

/// The result of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// From the first request sent to the last one finished.
    pub wall_s: f64,
    /// Successful requests per second of wall time.
    pub request_throughput: f64,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    /// `output_tokens / wall_s`.
    pub output_throughput: f64,
    /// Mean `usage.prompt_tokens` over the requests that reported it (checks `--input-len`).
    pub mean_prompt_tokens: Option<f64>,
    pub ttft_ms: Summary,
    /// Gaps between successive text chunks (one token per chunk on vLLM and flint).
    pub itl_ms: Summary,
    pub e2e_ms: Summary,
    /// Distinct failure messages, most frequent first.
    pub errors: Vec<ErrorCount>,
    /// The server's mean step time per phase over this level (flint servers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_profile: Option<super::profile::StepProfile>,
    pub samples: Vec<RequestRecord>,
}

impl LevelReport {
    /// Aggregates finished requests; `itl_ms` holds the inter-token gaps of all successful ones.
    pub fn build(concurrency: usize, wall_s: f64, samples: Vec<RequestRecord>, itl_ms: &[f64]) -> Self {
        let ok: Vec<&RequestRecord> = samples.iter().filter(|r| r.error.is_none()).collect();
        let output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
        let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
        let prompt: Vec<u64> = ok.iter().filter_map(|r| r.prompt_tokens).collect();
        let mut errors: Vec<ErrorCount> = Vec::new();
        for msg in samples.iter().filter_map(|r| r.error.as_deref()) {
            match errors.iter_mut().find(|e| e.message == msg) {
                Some(e) => e.count += 1,
                None => errors.push(ErrorCount { message: msg.to_owned(), count: 1 }),
            }
        }
        errors.sort_by_key(|e| std::cmp::Reverse(e.count));
        let per_s = |x: f64| if wall_s > 0.0 { x / wall_s } else { f64::NAN };
        Self {
            concurrency,
            requests: samples.len(),
            ok: ok.len(),
            failed: samples.len() - ok.len(),
            wall_s,
            request_throughput: per_s(ok.len() as f64),
            output_tokens,
            output_throughput: per_s(output_tokens as f64),
            mean_prompt_tokens: (!prompt.is_empty()).then(|| prompt.iter().sum::<u64>() as f64 / prompt.len() as f64),
            ttft_ms: Summary::of(&ttft),
            itl_ms: Summary::of(itl_ms),
            e2e_ms: Summary::of(&e2e),
            errors,
            step_profile: None,
            samples,
        }
    }
}

/// The column header of [`render_row`]'s lines (latencies are in milliseconds).
pub fn render_header() -> String {
    format!(
        "{:>5} {:>6} {:>5} {:>8} {:>8} {:>10} | {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "conc",
        "ok",
        "fail",
        "wall_s",
        "req/s",
        "out_tok/s",
        "ttft_p50",
        "ttft_p99",
        "ttft_avg",
        "itl_p50",
        "itl_p99",
        "itl_avg",
        "e2e_p50",
        "e2e_p99",
    )
}

/// Formats a number for the table: `-` for NaN (nothing measured), else fixed decimals.
fn num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{x:.decimals$}")
    }
}

/// One table line for a finished level, plus one indented line per distinct failure message.
pub fn render_row(r: &LevelReport) -> String {
    let mut s = format!(
        "{:>5} {:>6} {:>5} {:>8} {:>8} {:>10} | {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>9} {:>9}",
        r.concurrency,
        r.ok,
        r.failed,
        num(r.wall_s, 2),
        num(r.request_throughput, 2),
        num(r.output_throughput, 1),
        num(r.ttft_ms.p50, 1),
        num(r.ttft_ms.p99, 1),
        num(r.ttft_ms.mean, 1),
        num(r.itl_ms.p50, 2),
        num(r.itl_ms.p99, 2),
        num(r.itl_ms.mean, 2),
        num(r.e2e_ms.p50, 1),
        num(r.e2e_ms.p99, 1),
    );
    for e in r.errors.iter().take(5) {
        s.push_str(&format!("\n      {} failed: {}", e.count, e.message));
    }
    if r.errors.len() > 5 {
        s.push_str(&format!("\n      ... and {} other failure messages (see --json)", r.errors.len() - 5));
    }
    s
}

/// The whole table: header and one row per level.
pub fn render_table(levels: &[LevelReport]) -> String {
    let mut s = render_header();
    for r in levels {
        s.push('\n');
        s.push_str(&render_row(r));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&v, 50.0), 2.5);
        // numpy.percentile([1,2,3,4], 99) == 3.97
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&hundred, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn summary_sorts_and_skips_nan() {
        let s = Summary::of(&[30.0, f64::NAN, 10.0, 20.0]);
        assert_eq!(s.count, 3);
        assert_eq!(s.mean, 20.0);
        assert_eq!(s.p50, 20.0);
        assert_eq!(s.max, 30.0);
        let empty = Summary::of(&[]);
        assert_eq!(empty.count, 0);
        assert!(empty.mean.is_nan() && empty.p99.is_nan());
        // NaN becomes null in the JSON report rather than an invalid token.
        assert!(serde_json::to_string(&empty).unwrap().contains("\"p50\":null"));
    }

    fn rec(ttft: Option<f64>, e2e: f64, tokens: u64, error: Option<&str>) -> RequestRecord {
        RequestRecord {
            ttft_ms: ttft,
            e2e_ms: e2e,
            output_tokens: tokens,
            prompt_tokens: Some(10),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn level_report_counts_failures_and_throughput() {
        let samples = vec![
            rec(Some(10.0), 100.0, 8, None),
            rec(Some(30.0), 300.0, 8, None),
            rec(None, 5.0, 0, Some("HTTP 500: boom")),
            rec(None, 5.0, 0, Some("HTTP 500: boom")),
            rec(None, 1.0, 0, Some("timeout")),
        ];
        let r = LevelReport::build(2, 2.0, samples, &[1.0, 2.0, 3.0]);
        assert_eq!((r.requests, r.ok, r.failed), (5, 2, 3));
        assert_eq!(r.output_tokens, 16);
        assert_eq!(r.output_throughput, 8.0);
        assert_eq!(r.request_throughput, 1.0);
        assert_eq!(r.ttft_ms.p50, 20.0);
        assert_eq!(r.e2e_ms.mean, 200.0);
        assert_eq!(r.itl_ms.p50, 2.0);
        assert_eq!(r.mean_prompt_tokens, Some(10.0));
        assert_eq!(r.errors[0].message, "HTTP 500: boom");
        assert_eq!(r.errors[0].count, 2);
        assert_eq!(r.errors[1].count, 1);
        let table = render_table(&[r]);
        assert!(table.contains("2 failed: HTTP 500: boom"), "{table}");
        assert_eq!(table.lines().count(), 1 + 1 + 2);
    }
}
