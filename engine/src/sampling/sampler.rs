//! [`Sampler`]: one request's token picker. Runs once per token per request over a whole
//! vocabulary row (~50k–150k logits), so every step is one of the linear row passes of the
//! parent module (never a vocabulary sort), and vocabulary-sized buffers are scratch kept in
//! the sampler rather than allocated per token.

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{argmax, cut, exp, log_sum_exp, row_max, sum, top_few, zero_after, CutBy, Ranked, SamplingParams};

/// Largest top-k sampled from a sorted short list of candidates rather than the whole row.
const FEW: usize = 256;
/// How many of the best tokens top-p tries before building a histogram of the whole row.
const NUCLEUS_GUESS: usize = 64;

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
    pub(super) params: SamplingParams,
    rng: StdRng,
    /// Copy of the raw logits when they are needed after being modified in place (logprobs,
    /// and the argmax fallback when processing masked every token).
    raw: Vec<f32>,
    /// Tokens of the histogram bucket a top-k / top-p cut falls in.
    cand: Vec<u32>,
    /// The cuts' histogram.
    hist: Vec<f64>,
    /// Best tokens: top-k candidates, top-p's first guess, top logprobs.
    top: Vec<Ranked>,
    /// Per-token counters, all zero between calls (penalties mark and unmark what they touch).
    marks: Vec<u32>,
    /// The prompt's distinct ids, sorted (device sampling's repetition penalty), made once:
    /// the prompt does not change while the sample runs.
    pub(super) prompt_ids: Option<Vec<u32>>,
}

/// `x - lse`, with degenerate rows (NaN logit, no finite maximum) giving -inf rather than NaN,
/// which JSON cannot carry.
fn log_prob(x: f32, lse: f32) -> f32 {
    let lp = x - lse;
    if lp.is_nan() {
        f32::NEG_INFINITY
    } else {
        lp
    }
}

impl Sampler {
    /// The sampler of a single-sample request (same as `for_sample(params, 0)`); without a seed
    /// it draws one from the OS.
    pub fn new(params: SamplingParams) -> Self {
        Self::for_sample(params, 0)
    }

    /// The sampler of sample `index` of an `n > 1` request: seeded with `seed + index`
    /// (wrapping) so parallel samples differ yet the whole request repeats; without a seed,
    /// each sample draws its own from the OS.
    pub fn for_sample(params: SamplingParams, index: usize) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s.wrapping_add(index as u64)),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            raw: Vec::new(),
            cand: Vec::new(),
            hist: Vec::new(),
            top: Vec::new(),
            marks: Vec::new(),
            prompt_ids: None,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// One draw in [0, 1) from this sampler's generator (the device sampling path's draw).
    pub(super) fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
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
        for &(id, bias) in p.logit_bias.iter() {
            if let Some(x) = logits.get_mut(id as usize) {
                *x += bias;
            }
        }
        // Regardless of `ignore_eos`: `min_tokens` is an explicit request for that many tokens.
        if ctx.output.len() < p.min_tokens {
            for &id in ctx.eos_ids.iter().chain(p.stop_token_ids.iter()) {
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
        let max = row_max(logits);
        if max == f32::NEG_INFINITY {
            return None;
        }
        if max == f32::INFINITY {
            return Some(argmax(logits)); // an infinite logit has all the probability
        }
        match self.params.top_k {
            Some(k) if k <= FEW => Some(self.draw_few(logits, k, max)),
            _ => self.draw_dense(logits, max),
        }
    }

    /// Small top-k: only the k best tokens get a weight, so the row is read once (by
    /// [`top_few`]) and everything else works on a sorted list of k tokens.
    fn draw_few(&mut self, logits: &[f32], k: usize, max: f32) -> u32 {
        let p = &self.params;
        let top = &mut self.top;
        top_few(logits, k, top);
        // Weights `exp((x - max) / t)`: the best token's is exactly 1, none can overflow.
        for r in top.iter_mut() {
            r.x = exp((r.x - max) / p.temperature);
        }
        let mut keep = top.iter().position(|r| r.x == 0.0).unwrap_or(top.len());
        if p.top_p < 1.0 {
            let target = top.iter().map(|r| f64::from(r.x)).sum::<f64>() * f64::from(p.top_p);
            let mut cum = 0.0;
            keep = keep.min(
                top.iter()
                    .position(|r| {
                        cum += f64::from(r.x);
                        cum >= target
                    })
                    .map_or(keep, |i| i + 1),
            );
        }
        // prob < min_p · max_prob ⇔ w < min_p, the maximum's weight being 1.
        keep = keep.min(top.partition_point(|r| r.x >= p.min_p)).max(1);
        top.truncate(keep);
        let mut r = self.rng.random::<f64>() * top.iter().map(|r| f64::from(r.x)).sum::<f64>();
        for t in top.iter() {
            if r < f64::from(t.x) {
                return t.id;
            }
            r -= f64::from(t.x);
        }
        top[top.len() - 1].id // rounding left `r` just past the end
    }

    /// Any other truncation, as passes over the whole row: `logits` becomes the weights, each
    /// filter zeroes the weights it drops, and the draw walks the row in id order.
    fn draw_dense(&mut self, logits: &mut [f32], max: f32) -> Option<u32> {
        let p = &self.params;
        for x in logits.iter_mut() {
            *x = exp((*x - max) / p.temperature);
        }
        if let Some(k) = p.top_k {
            if let Some(last) = cut(logits, CutBy::Count, k as f64, &mut self.hist, &mut self.cand) {
                zero_after(logits, last);
            }
        }
        // Top-p's mass is relative to what top-k kept (renormalized), before min-p. The
        // nucleus is usually a few dozen tokens: try those before the histogram.
        if p.top_p < 1.0 {
            let target = sum(logits) * f64::from(p.top_p);
            top_few(logits, NUCLEUS_GUESS, &mut self.top);
            let mut cum = 0.0;
            let last = match self.top.iter().find(|r| {
                cum += f64::from(r.x);
                cum >= target
            }) {
                Some(r) => Some((r.x, r.id)),
                None => cut(logits, CutBy::Mass, target, &mut self.hist, &mut self.cand),
            };
            if let Some(last) = last {
                zero_after(logits, last);
            }
        }
        // prob < min_p · max_prob ⇔ w < min_p; it commutes with the cuts above, as all three
        // drop the bottom of the same order.
        if p.min_p > 0.0 {
            for w in logits.iter_mut() {
                if *w < p.min_p {
                    *w = 0.0;
                }
            }
        }
        let mut r = self.rng.random::<f64>() * sum(logits);
        // Whole chunks are skipped by their sum; zero weights are never picked (r >= 0).
        const CHUNK: usize = 256;
        for (c, ws) in logits.chunks(CHUNK).enumerate() {
            let s = sum(ws);
            if r >= s {
                r -= s;
                continue;
            }
            for (j, &w) in ws.iter().enumerate() {
                let w = f64::from(w);
                if r < w {
                    return Some((c * CHUNK + j) as u32);
                }
                r -= w;
            }
        }
        // Rounding left `r` just past the end: the last token with a weight.
        logits.iter().rposition(|&w| w > 0.0).map(|i| i as u32)
    }

    /// The chosen token's raw logprob and the top `k` raw alternatives.
    fn raw_logprobs(&mut self, id: u32, k: usize) -> SampledToken {
        let lse = log_sum_exp(&self.raw);
        let logprob = log_prob(self.raw[id as usize], lse);
        top_few(&self.raw, k, &mut self.top);
        let top_logprobs = self.top.iter().map(|r| (r.id, log_prob(r.x, lse))).collect();
        SampledToken { id, logprob, top_logprobs }
    }
}
