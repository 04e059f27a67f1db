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

mod device;
mod params;
mod sampler;
#[cfg(test)]
mod tests;

use std::{cmp::Ordering, collections::BinaryHeap};

pub use params::{
    SamplingParams, MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_ENTRIES, MAX_LOGPROBS, MAX_N, MAX_OPENAI_PENALTY, MAX_STOP,
    MAX_STOP_BYTES, MAX_STOP_TOKEN_IDS,
};
pub use device::SamplingDevice;
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
    for (c, xs) in logits.chunks(LANES).enumerate() {
        if xs.iter().fold(false, |hit, &x| hit | (x > best_x)) {
            for (j, &x) in xs.iter().enumerate() {
                if x > best_x {
                    (best, best_x) = (c * LANES + j, x);
                }
            }
        }
    }
    best as u32
}

/// Largest value, NaN ignored; -inf for an empty or all-NaN row (the device kernel's CPU path
/// uses the same function).
pub(crate) use flint_kernels::sampling::row_max;

/// Σ f(x) in a fixed order: f32 lanes over blocks of 256 values (few enough terms per lane
/// for ~1e-7 relative error), blocks added in f64 (a plain 150k-term f32 sum would lose
/// ~1e-3). f64 lanes throughout would not vectorize with the exp.
fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in xs.chunks(256) {
        let mut acc = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += f(x);
            }
        }
        total += acc.iter().map(|&a| f64::from(a)).chain(tail.iter().map(|&x| f64::from(f(x)))).sum::<f64>();
    }
    total
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

/// `exp(x)` to ~2 ulp, branch-free so row loops vectorize (libm's scalar `expf` is several
/// times slower and dominated sampling); 0 below -87. The same function the device sampling
/// kernel uses, so both paths weigh tokens alike.
pub(crate) use flint_kernels::sampling::exp;

/// A token and its value. Ordered best first (higher value, then lower id), so the greatest
/// is the worst and a `BinaryHeap` of them keeps the current k-th best on top.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ranked {
    pub x: f32,
    pub id: u32,
}

impl Eq for Ranked {}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        other.x.partial_cmp(&self.x).unwrap_or(Ordering::Equal).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Leaves in `out` the `k` largest values of `xs`, largest first, lower id first on ties, NaN
/// as -inf (the exact top-k in the order of [`by_value_desc`]). One pass with a size-k heap
/// whose top is the k-th best so far; a chunk is only looked into when a value in it beats
/// that, which after the first few chunks is rare.
pub(crate) fn top_few(xs: &[f32], k: usize, out: &mut Vec<Ranked>) {
    out.clear();
    let head = k.min(xs.len());
    out.extend(xs[..head].iter().enumerate().map(|(i, &x)| Ranked { x: key(x), id: i as u32 }));
    let mut heap = BinaryHeap::from(std::mem::take(out));
    if let Some(mut thr) = heap.peek().map(|r| r.x) {
        for (c, chunk) in xs[head..].chunks(LANES).enumerate() {
            if chunk.iter().fold(false, |hit, &x| hit | (x > thr)) {
                for (j, &x) in chunk.iter().enumerate() {
                    // Strictly better only: an equal value comes with a higher id.
                    if x > thr {
                        if let Some(mut worst) = heap.peek_mut() {
                            *worst = Ranked { x, id: (head + c * LANES + j) as u32 };
                        }
                        thr = heap.peek().map_or(x, |r| r.x);
                    }
                }
            }
        }
    }
    *out = heap.into_sorted_vec();
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
/// positive weights never reach it (nothing to cut). A radix select: a histogram pass over the
/// row finds the bucket where the prefix ends, two more levels narrow that bucket down by the
/// next mantissa bits, and only the few tokens left are sorted, so clustered weights cost no
/// big sort either. `hist` and `members` are scratch.
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
    // The highest bucket where `above` plus its own amount reaches the target; `above`
    // accumulates the buckets over it.
    let crossing = |hist: &[f64], above: &mut f64| {
        (0..hist.len()).rev().find(|&b| {
            let reached = *above + hist[b] >= target;
            if !reached {
                *above += hist[b];
            }
            reached
        })
    };
    hist.clear();
    hist.resize(BUCKETS, 0.0);
    for &x in w {
        hist[bucket(x)] += amount(x);
    }
    hist[0] = 0.0; // zero weights never count, even toward a top-k
    let mut above = 0.0;
    let b = crossing(hist, &mut above).filter(|&b| b > 0)?;
    // The bucket's weights, as a range of bit patterns (monotone for weights >= 0), so chunks
    // without any are skipped by a vectorized test.
    let lo = if b == 1 { 1 } else { ((b + 510) << 20) as u32 };
    let hi = if b == BUCKETS - 1 { u32::MAX } else { ((b + 511) << 20) as u32 };
    let inside = |x: f32| (lo..hi).contains(&x.to_bits());
    members.clear();
    for (c, chunk) in w.chunks(LANES).enumerate() {
        if chunk.iter().fold(false, |hit, &x| hit | inside(x)) {
            let base = (c * LANES) as u32;
            members.extend((base..).zip(chunk).filter(|&(_, &x)| inside(x)).map(|(i, _)| i));
        }
    }
    // Within a bucket (but the catch-all bucket 1) the next 8 bits are again monotone.
    let digit = |i: u32, shift: u32| ((w[i as usize].to_bits() >> shift) & 0xFF) as usize;
    for shift in [12, 4] {
        if b == 1 || members.len() <= 64 {
            break;
        }
        hist.clear();
        hist.resize(256, 0.0);
        for &i in members.iter() {
            hist[digit(i, shift)] += amount(w[i as usize]);
        }
        let before = above;
        let Some(d) = crossing(hist, &mut above) else {
            above = before; // rounding: keep the whole bucket
            break;
        };
        members.retain(|&i| digit(i, shift) == d);
    }
    members.sort_unstable_by(by_value_desc(w));
    let mut cum = above;
    for &i in members.iter() {
        cum += amount(w[i as usize]);
        if cum >= target {
            return Some((w[i as usize], i));
        }
    }
    // Sums in another order rounded differently: keep all of the last bucket.
    members.last().map(|&i| (w[i as usize], i))
}

/// Zeroes every weight after `last` (weight, id) in the descending order of [`cut`]: the
/// smaller ones, and the equal ones with a higher id (two branch-free passes).
pub(crate) fn zero_after(w: &mut [f32], (wc, ic): (f32, u32)) {
    for x in w.iter_mut() {
        *x = if *x < wc { 0.0 } else { *x };
    }
    for x in w.iter_mut().skip(ic as usize + 1) {
        *x = if *x == wc { 0.0 } else { *x };
    }
}
