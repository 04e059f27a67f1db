//! [`Sampler`]: one request's token picker. Runs once per token per request over a whole
//! vocabulary row (~50k–150k logits), so every step is a linear pass or a partial selection,
//! never a full-vocabulary sort, and vocabulary-sized buffers are scratch kept in the sampler.

use std::cmp::Ordering;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::params::SamplingParams;

/// What the sampler may look at besides the logits: the token history (for penalties) and the
/// model's end-of-sequence ids (for `min_tokens`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleContext<'a> {
    /// The prompt's token ids (repetition penalty).
    pub prompt: &'a [u32],
    /// The ids generated so far for this sample (all penalties, `min_tokens`).
    pub output: &'a [u32],
    /// The model's end-of-sequence ids, banned until `min_tokens` tokens were generated.
    pub eos_ids: &'a [u32],
}

/// One chosen token.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// Log-probability of `id` under the raw model distribution (before penalties and
    /// temperature, as vLLM's default); 0 when `logprobs` was not requested.
    pub logprob: f32,
    /// The `logprobs` most likely tokens of the raw distribution, most likely first (lower id
    /// first on ties); empty when not requested.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Picks tokens for one sample of one request; owns its random generator so seeded runs
/// repeat, and its scratch buffers so a token costs no vocabulary-sized allocation.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Copy of the raw logits when they are needed after being modified in place (logprobs,
    /// and the argmax fallback when processing masked every token).
    raw: Vec<f32>,
    /// Candidate token ids (sampling) or top-logprob ids.
    cand: Vec<u32>,
    /// Per-token counters, all zero between calls (penalties mark and unmark what they touch).
    marks: Vec<u32>,
}

/// NaN ranks as -inf everywhere: a broken logit must never win nor panic a comparison.
#[inline]
fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Order of token ids by descending `values`, lower id first on ties: a total order, so
/// partial selections pick the same set whatever the algorithm does with equal keys.
fn by_value_desc(values: &[f32]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |&a, &b| {
        let (va, vb) = (key(values[a as usize]), key(values[b as usize]));
        vb.partial_cmp(&va).unwrap_or(Ordering::Equal).then(a.cmp(&b))
    }
}

/// Index of the largest value; the first one on ties (as `torch.argmax`). NaN counts as -inf;
/// a row with no value above -inf gives 0.
pub fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut best_x) = (0, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if x > best_x {
            (best, best_x) = (i, x);
        }
    }
    best as u32
}

/// `log Σ exp(x)` over the row, the log-softmax normalizer; accumulated in f64 so a 150k-token
/// row keeps ~1e-7 relative precision. A row with no finite maximum returns that maximum.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().filter(|x| !x.is_nan()).map(|&x| f64::from((x - max).exp())).sum();
    max + sum.ln() as f32
}

/// `x - lse`, with degenerate rows (NaN logit, no finite maximum) giving -inf rather than NaN,
/// which JSON cannot carry.
fn log_prob(x: f32, lse: f32) -> f32 {
    let lp = key(x) - lse;
    if lp.is_nan() {
        f32::NEG_INFINITY
    } else {
        lp
    }
}

/// Length of the top-p nucleus of `cand` (weights `w`, unnormalized): the shortest prefix, in
/// descending weight order, whose mass reaches `target`. Sorts `cand`'s prefix only as far as
/// needed: select the next chunk, sort it, accumulate, grow the chunk ×4. A peaked distribution
/// costs one selection and a 64-element sort instead of a full-vocabulary sort.
fn nucleus_len(cand: &mut [u32], w: &[f32], target: f64) -> usize {
    let n = cand.len();
    let cmp = by_value_desc(w);
    let (mut done, mut chunk, mut cum) = (0, 64, 0.0f64);
    while done < n {
        let end = (done + chunk).min(n);
        if end < n {
            cand[done..].select_nth_unstable_by(end - done - 1, &cmp);
        }
        cand[done..end].sort_unstable_by(&cmp);
        for (j, &i) in cand[done..end].iter().enumerate() {
            cum += f64::from(w[i as usize]);
            if cum >= target {
                return done + j + 1;
            }
        }
        (done, chunk) = (end, chunk * 4);
    }
    n
}

impl Sampler {
    /// The sampler of a single-sample request (same as `for_sample(params, 0)`); without a seed
    /// it draws one from the OS.
    pub fn new(params: SamplingParams) -> Self {
        Self::for_sample(params, 0)
    }

    /// The sampler of sample `index` of an `n > 1` request: seeded with `seed + index`
    /// (wrapping) so parallel samples differ yet the whole request repeats.
    pub fn for_sample(params: SamplingParams, index: usize) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s.wrapping_add(index as u64)),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng, raw: Vec::new(), cand: Vec::new(), marks: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from one row of raw logits. `logits` is scratch: it is modified
    /// in place. Order: raw logprobs, logit bias, `min_tokens` masking, repetition penalty,
    /// presence/frequency penalties, then argmax (greedy) or temperature, top-k, top-p, min-p
    /// and a draw from this sampler's generator. If processing leaves no token above -inf, the
    /// raw argmax is taken. Never panics, whatever the values (NaN counts as -inf).
    pub fn sample(&mut self, logits: &mut [f32], ctx: &SampleContext<'_>) -> SampledToken {
        if logits.is_empty() {
            return SampledToken { id: 0, logprob: f32::NEG_INFINITY, top_logprobs: Vec::new() };
        }
        let modifies = self.modifies(ctx);
        let keep_raw = self.params.logprobs.is_some() || modifies;
        if keep_raw {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
        }
        if modifies {
            self.process(logits, ctx);
        }
        let picked = if self.params.is_greedy() || self.params.top_k == Some(1) {
            let i = argmax(logits);
            (logits[i as usize] > f32::NEG_INFINITY).then_some(i)
        } else {
            self.draw(logits)
        };
        // Everything masked: the raw argmax (unmodified `logits` when nothing was copied).
        let id = picked.unwrap_or_else(|| argmax(if keep_raw { &self.raw } else { logits }));
        match self.params.logprobs {
            None => SampledToken { id, logprob: 0.0, top_logprobs: Vec::new() },
            Some(k) => self.raw_logprobs(id, k),
        }
    }

    /// Whether any of bias, masking or penalties will change the row, i.e. whether the raw
    /// logits must be kept aside; false keeps plain greedy a single pass.
    fn modifies(&self, ctx: &SampleContext<'_>) -> bool {
        let p = &self.params;
        !p.logit_bias.is_empty()
            || (ctx.output.len() < p.min_tokens && !(ctx.eos_ids.is_empty() && p.stop_token_ids.is_empty()))
            || (p.repetition_penalty != 1.0 && !(ctx.prompt.is_empty() && ctx.output.is_empty()))
            || ((p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) && !ctx.output.is_empty())
    }

    /// Logit bias, `min_tokens` masking and the penalties, in place. Ids outside the row are
    /// skipped (the engine checks them against the vocabulary up front).
    fn process(&mut self, logits: &mut [f32], ctx: &SampleContext<'_>) {
        let p = &self.params;
        let n = logits.len();
        for &(id, bias) in &p.logit_bias {
            if let Some(x) = logits.get_mut(id as usize) {
                *x += bias;
            }
        }
        // Regardless of `ignore_eos`: `min_tokens` is an explicit request for that many tokens.
        if ctx.output.len() < p.min_tokens {
            for &id in ctx.eos_ids.iter().chain(&p.stop_token_ids) {
                if let Some(x) = logits.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let penalize_output = p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if p.repetition_penalty == 1.0 && !penalize_output {
            return;
        }
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        let marks = &mut self.marks;
        let history = || ctx.prompt.iter().chain(ctx.output).map(|&id| id as usize).filter(|&i| i < n);
        if p.repetition_penalty != 1.0 {
            // Hugging Face: each distinct id of prompt ∪ output once, towards "less likely"
            // whatever the logit's sign.
            let r = p.repetition_penalty;
            for i in history() {
                if marks[i] == 0 {
                    marks[i] = 1;
                    logits[i] = if logits[i] > 0.0 { logits[i] / r } else { logits[i] * r };
                }
            }
            history().for_each(|i| marks[i] = 0);
        }
        if penalize_output {
            // OpenAI: over the output only; count, then apply once per distinct id while
            // clearing the count.
            let output = || ctx.output.iter().map(|&id| id as usize).filter(|&i| i < n);
            output().for_each(|i| marks[i] += 1);
            for i in output() {
                if marks[i] > 0 {
                    logits[i] -= p.presence_penalty + p.frequency_penalty * marks[i] as f32;
                    marks[i] = 0;
                }
            }
        }
    }

    /// Temperature, top-k, top-p, min-p and the draw. `None` (before touching `logits`) when
    /// no token is above -inf.
    fn draw(&mut self, logits: &mut [f32]) -> Option<u32> {
        let p = &self.params;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        if max == f32::NEG_INFINITY {
            return None;
        }
        if max == f32::INFINITY {
            return Some(argmax(logits)); // an infinite logit has all the probability
        }
        // Scaled logits in place, shifted so the maximum is 0: its weight is exactly 1 and
        // no exp overflows, whatever the temperature.
        let t = p.temperature;
        let cand = &mut self.cand;
        cand.clear();
        for (i, x) in logits.iter_mut().enumerate() {
            if *x > f32::NEG_INFINITY {
                *x = (*x - max) / t;
                cand.push(i as u32);
            }
        }
        if let Some(k) = p.top_k.filter(|&k| k < cand.len()) {
            cand.select_nth_unstable_by(k - 1, by_value_desc(logits));
            cand.truncate(k);
        }
        // Weights in place; `z` normalizes over the top-k set, before min-p, as top-p needs.
        let mut z = 0.0f64;
        for &i in cand.iter() {
            let w = logits[i as usize].exp();
            logits[i as usize] = w;
            z += f64::from(w);
        }
        // min-p: prob < min_p · max_prob ⇔ w < min_p, as the maximum's weight is 1. Zero
        // weights (underflow) can never be drawn, so they go too, shortening top-p's sort.
        // Both cut the bottom of the order, so filtering before top-p changes nothing.
        cand.retain(|&i| {
            let w = logits[i as usize];
            w > 0.0 && w >= p.min_p
        });
        if p.top_p < 1.0 {
            let keep = nucleus_len(cand, logits, z * f64::from(p.top_p));
            cand.truncate(keep);
        }
        let total: f64 = cand.iter().map(|&i| f64::from(logits[i as usize])).sum();
        let mut r = self.rng.random::<f64>() * total;
        for &i in cand.iter() {
            let w = f64::from(logits[i as usize]);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        cand.last().copied() // rounding left `r` just past the end
    }

    /// The chosen token's raw logprob and the top `k` raw alternatives (partial selection).
    fn raw_logprobs(&mut self, id: u32, k: usize) -> SampledToken {
        let raw = &self.raw;
        let lse = log_sum_exp(raw);
        let logprob = log_prob(raw[id as usize], lse);
        let k = k.min(raw.len());
        let cand = &mut self.cand;
        cand.clear();
        if k > 0 {
            cand.extend(0..raw.len() as u32);
            let cmp = by_value_desc(raw);
            if k < cand.len() {
                cand.select_nth_unstable_by(k - 1, &cmp);
                cand.truncate(k);
            }
            cand.sort_unstable_by(&cmp);
        }
        let top_logprobs = cand.iter().map(|&i| (i, log_prob(raw[i as usize], lse))).collect();
        SampledToken { id, logprob, top_logprobs }
    }
}
