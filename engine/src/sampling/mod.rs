//! Sampling parameters (checked once, at construction) and the sampler that turns a row of
//! logits into a token.
//!
//! - [`SamplingParams`]: the OpenAI/vLLM knobs (temperature, top-k/p, min-p, penalties, logit
//!   bias, `min_tokens`, stop conditions, logprobs, `n`, seed), each range-checked by its setter.
//! - [`Sampler`]: one sample's picker, with its own seeded generator and scratch buffers;
//!   [`Sampler::sample`] takes a logits row and a [`SampleContext`] (token history, EOS ids) and
//!   returns a [`SampledToken`] (id, raw logprob, top alternatives).
//!
//! The row primitives below run once per token per request over the whole vocabulary
//! (~50k–150k values), so each is one linear pass written in fixed-width lanes the compiler
//! vectorizes; none sorts the vocabulary. Results never depend on lane order beyond the fixed
//! summation order, so sampling stays reproducible.

mod params;
mod sampler;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

pub use params::{SamplingParams, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_N, MAX_OPENAI_PENALTY, MAX_STOP};
pub use sampler::{SampleContext, SampledToken, Sampler};

/// Lanes of the vectorized loops (two AVX registers of f32, four SSE ones).
const LANES: usize = 16;

/// NaN ranks as -inf everywhere: a broken logit must never win nor panic a comparison.
#[inline]
fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Order of token ids by descending `values`, lower id first on ties: a total order, so a cut
/// of the vocabulary is the same set whatever algorithm finds it.
fn by_value_desc(values: &[f32]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |&a, &b| {
        let (va, vb) = (key(values[a as usize]), key(values[b as usize]));
        vb.partial_cmp(&va).unwrap_or(Ordering::Equal).then(a.cmp(&b))
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax`). NaN counts as -inf;
/// a row with no value above -inf gives 0. One pass: a chunk is looked at element by element
/// only when some value in it beats the best so far.
pub fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut best_x) = (0, f32::NEG_INFINITY);
    let mut scan = |base: usize, xs: &[f32]| {
        for (j, &x) in xs.iter().enumerate() {
            if x > best_x {
                (best, best_x) = (base + j, x);
            }
        }
    };
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (c, xs) in chunks.enumerate() {
        if xs.iter().fold(false, |hit, &x| hit | (x > best_x)) {
            scan(c * LANES, xs);
        }
    }
    scan(logits.len() - tail.len(), tail);
    best as u32
}

/// Largest value, NaN ignored; -inf for an empty or all-NaN row.
pub(crate) fn row_max(xs: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = max(*a, x);
        }
    }
    acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &x| max(m, x))
}

/// Σ f(x) in f64 lanes (a 150k-term f32 sum would lose ~1e-3 relative), in a fixed order.
fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(f(x));
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&x| f64::from(f(x))).sum::<f64>()
}

pub(crate) fn sum(xs: &[f32]) -> f64 {
    sum_by(xs, |x| x)
}

/// `log Σ exp(x)`, the log-softmax normalizer (NaN ignored). A row with no finite maximum
/// returns that maximum.
pub(crate) fn log_sum_exp(xs: &[f32]) -> f32 {
    let max = row_max(xs);
    if !max.is_finite() {
        return max;
    }
    max + sum_by(xs, |x| exp(x - max)).ln() as f32
}

/// `exp(x)` to ~2 ulp (Cephes' `expf` polynomial), branch-free so row loops vectorize; libm's
/// scalar `expf` is ~10× slower and dominates sampling otherwise. Below -87 (including -inf
/// and NaN) it returns 0: such weights are < 1e-37 of the row's maximum, which is 1 here.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Rounds to nearest by adding 1.5·2²³: the integer then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x > -87.0 { x } else { -87.0 };
    let xc = if xc < 88.0 { xc } else { 88.0 };
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23);
    // Cody–Waite: ln 2 = C1 + C2 with C1 short enough that n·C1 is exact.
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = (p * (r * r) + r + 1.0) * two_n;
    if x >= -87.0 {
        y
    } else {
        0.0
    }
}

/// The `k` largest values as (id, value) pairs, largest first, lower id first on ties, NaN as
/// -inf. For the few top logprobs: one pass that only looks inside a chunk when it holds a
/// value above the current k-th best.
pub(crate) fn top_few(xs: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    if k == 0 {
        return;
    }
    // Ids arrive in increasing order, so a newcomer goes after the equal values already kept.
    let mut offer = |out: &mut Vec<(u32, f32)>, i: usize, x: f32| {
        let x = key(x);
        let pos = out.partition_point(|&(_, y)| y >= x);
        if pos < k {
            out.truncate(k - 1);
            out.insert(pos, (i as u32, x));
        }
    };
    let head = k.min(xs.len());
    for (i, &x) in xs[..head].iter().enumerate() {
        offer(out, i, x);
    }
    let mut thr = out[out.len() - 1].1;
    for (c, chunk) in xs[head..].chunks(LANES).enumerate() {
        if chunk.iter().fold(false, |hit, &x| hit | (x > thr)) {
            for (j, &x) in chunk.iter().enumerate() {
                if x > thr {
                    offer(out, head + c * LANES + j, x);
                    thr = out[k - 1].1;
                }
            }
        }
    }
}

/// What [`cut`] accumulates along the descending order of the weights.
#[derive(Clone, Copy)]
pub(crate) enum CutBy {
    /// Number of tokens (top-k).
    Count,
    /// Probability mass, unnormalized (top-p).
    Mass,
}

/// Buckets of [`cut`]'s histogram: 0 for zero weights, 1 for weights below 2⁻⁶³, then 8 per
/// binade up to 1.
const BUCKETS: usize = 507;

/// Histogram bucket of a weight in [0, 1], monotone in the weight.
#[inline(always)]
fn bucket(w: f32) -> usize {
    let top = (w.to_bits() >> 20) as usize; // exponent and 3 mantissa bits
    (top.max(511) - 510).min(BUCKETS - 1) * usize::from(w > 0.0)
}

/// The last token of the shortest prefix of the weights `w` (in [0, 1], descending, lower id
/// first on ties) whose count or mass reaches `target`, as (weight, id); `None` when the
/// positive weights never reach it (nothing to cut). A histogram pass finds the bucket where
/// the prefix ends; only that bucket's tokens are sorted. `hist` and `members` are scratch.
pub(crate) fn cut(
    w: &[f32],
    by: CutBy,
    target: f64,
    hist: &mut Vec<f64>,
    members: &mut Vec<u32>,
) -> Option<(f32, u32)> {
    let amount = |x: f32| match by {
        CutBy::Count => 1.0,
        CutBy::Mass => f64::from(x),
    };
    hist.clear();
    hist.resize(BUCKETS, 0.0);
    for &x in w {
        hist[bucket(x)] += amount(x);
    }
    let mut above = 0.0;
    let b = (1..BUCKETS).rev().find(|&b| {
        let reached = above + hist[b] >= target;
        if !reached {
            above += hist[b];
        }
        reached
    })?;
    members.clear();
    members.extend((0..w.len() as u32).filter(|&i| bucket(w[i as usize]) == b));
    members.sort_unstable_by(by_value_desc(w));
    let mut cum = above;
    for &i in members.iter() {
        cum += amount(w[i as usize]);
        if cum >= target {
            return Some((w[i as usize], i));
        }
    }
    // The bucket's total rounded differently from the per-token sum: keep the whole bucket.
    members.last().map(|&i| (w[i as usize], i))
}

/// Zeroes every weight after `last` (weight, id) in the descending order of [`cut`].
pub(crate) fn zero_after(w: &mut [f32], (wc, ic): (f32, u32)) {
    for (i, x) in w.iter_mut().enumerate() {
        if *x < wc || (*x == wc && i > ic as usize) {
            *x = 0.0;
        }
    }
}
