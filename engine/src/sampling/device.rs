//! Sampling on the model's device: a [`Sampler`]'s parameters and history become one
//! [`RowSampling`] (temperature, top-k/p, min-p and this step's random draw) and a sparse list
//! of [`LogitAdjust`]s (logit bias, `min_tokens` bans, repetition / presence / frequency
//! penalties), which `flint_kernels::sample_rows` applies to the logits where they are. Only the
//! token ids come back to the host, instead of a vocabulary-sized row per sequence (128 MiB per
//! step for 256 sequences of a 128k vocabulary).
//!
//! The distribution is the host sampler's: the same adjustments in the same order (bias, ban,
//! repetition penalty by the sign of the biased logit, then the OpenAI penalties), the same
//! truncations. The draw differs (one uniform per token from the sampler's own seeded
//! generator, walked in a fixed-point prefix sum), so a seeded request repeats exactly on one
//! path but not across the two, as in vLLM. Rows that ask for logprobs stay on the host, which
//! needs their whole row anyway.

use flint_kernels::{LogitAdjust, RowSampling};

use super::{SampleContext, Sampler};

/// Where a step's tokens are picked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SamplingDevice {
    /// On the model's device when it is a GPU, on the host otherwise (the host sampler is the
    /// faster of the two on the CPU).
    #[default]
    Auto,
    /// Always the host sampler: every sampling row's logits are copied to the host.
    Host,
    /// Always `flint_kernels::sample_rows` on the model's device (rows that ask for logprobs
    /// excepted); on the CPU this runs the kernel's CPU implementation.
    Device,
}

impl SamplingDevice {
    /// Whether rows without logprobs are sampled by the device kernel, for a model on a GPU
    /// (`gpu`) or not.
    pub fn on_device(self, gpu: bool) -> bool {
        match self {
            Self::Auto => gpu,
            Self::Host => false,
            Self::Device => true,
        }
    }

}

impl Sampler {
    /// Whether this sampler's rows can be picked on the device: everything but logprobs, which
    /// need the raw row on the host.
    pub fn device_capable(&self) -> bool {
        self.params().logprobs.is_none()
    }

    /// This step's parameters for row `row` of a device sampling call; pushes the row's logit
    /// adjustments onto `adjust`, one per token, sorted by token. Consumes one draw of the
    /// sampler's generator when the row is not greedy. Each source (bias, bans, repetition,
    /// OpenAI penalties) appends its entries, then one sort and one merge pass combine those of
    /// the same token: O(k log k) for k entries, whatever the mix.
    pub fn device_row(&mut self, ctx: &SampleContext<'_>, row: u32, vocab: usize, adjust: &mut Vec<LogitAdjust>) -> RowSampling {
        let first = adjust.len();
        let p = &self.params;
        let blank = |token: u32| LogitAdjust { row, token, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: 0.0 };
        let in_vocab = |id: &u32| (*id as usize) < vocab;
        // The kernel applies bias, then the repetition penalty by the sign of the biased logit,
        // then `add`, as `Sampler::process` does; a ban is add = -inf, which the penalties
        // (finite) cannot undo, so the entries combine in any order.
        adjust.extend(p.logit_bias.iter().filter(|(id, _)| in_vocab(id)).map(|&(id, bias)| LogitAdjust { bias, ..blank(id) }));
        if ctx.output.len() < p.min_tokens {
            let banned = ctx.eos_ids.iter().chain(p.stop_token_ids.iter()).copied().filter(in_vocab);
            adjust.extend(banned.map(|id| LogitAdjust { add: f32::NEG_INFINITY, ..blank(id) }));
        }
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            let prompt = self.prompt_ids.get_or_insert_with(|| {
                let mut ids = ctx.prompt.to_vec();
                ids.sort_unstable();
                ids.dedup();
                ids
            });
            // Each distinct id of prompt ∪ output once.
            let mut ids: Vec<u32> = prompt.iter().chain(ctx.output).copied().filter(in_vocab).collect();
            ids.sort_unstable();
            ids.dedup();
            adjust.extend(ids.into_iter().map(|id| LogitAdjust { pos_scale: 1.0 / r, neg_scale: r, ..blank(id) }));
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut out: Vec<u32> = ctx.output.iter().copied().filter(in_vocab).collect();
            out.sort_unstable();
            let (pp, fp) = (p.presence_penalty, p.frequency_penalty);
            adjust.extend(out.chunk_by(|a, b| a == b).map(|run| LogitAdjust { add: -(pp + fp * run.len() as f32), ..blank(run[0]) }));
        }
        merge_by_token(adjust, first);
        let greedy = p.is_greedy() || p.top_k == Some(1);
        let (temperature, top_k, top_p, min_p) =
            (p.temperature, p.top_k.map_or(0, |k| k.min(u32::MAX as usize) as u32), p.top_p, p.min_p);
        RowSampling {
            temperature: if greedy { 0.0 } else { temperature },
            top_k,
            top_p,
            min_p,
            uniform: if greedy { 0.0 } else { self.uniform() },
        }
    }
}

/// Sorts `adjust[first..]` by token and folds the entries of each token into one: biases and
/// `add`s sum (a ban's -inf stays -inf), scales multiply (only the repetition entry has any).
fn merge_by_token(adjust: &mut Vec<LogitAdjust>, first: usize) {
    adjust[first..].sort_unstable_by_key(|a| a.token);
    let mut w = first;
    for r in first..adjust.len() {
        let e = adjust[r];
        if w > first && adjust[w - 1].token == e.token {
            let m = &mut adjust[w - 1];
            m.bias += e.bias;
            m.pos_scale *= e.pos_scale;
            m.neg_scale *= e.neg_scale;
            m.add += e.add;
        } else {
            adjust[w] = e;
            w += 1;
        }
    }
    adjust.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    #[test]
    fn adjustments_follow_the_host_samplers_order_sorted_by_token() {
        let params = SamplingParams::new(8)
            .and_then(|p| p.with_logit_bias(vec![(5, 1.5), (30, 2.0), (99, 1.0)]))
            .and_then(|p| p.with_min_tokens(4))
            .and_then(|p| p.with_repetition_penalty(2.0))
            .and_then(|p| p.with_presence_penalty(0.5))
            .and_then(|p| p.with_frequency_penalty(0.25))
            .and_then(|p| p.with_temperature(0.7))
            .and_then(|p| p.with_top_k(Some(40)))
            .expect("valid");
        let mut s = Sampler::new(params.with_seed(Some(1)));
        let ctx = SampleContext { prompt: &[7, 5, 7, 3], output: &[9, 5, 9], eos_ids: &[2] };
        let mut adjust = vec![LogitAdjust { row: 0, token: 1, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: 0.0 }];
        let row = s.device_row(&ctx, 1, 64, &mut adjust);
        assert_eq!((row.temperature, row.top_k, row.top_p, row.min_p), (0.7, 40, 1.0, 0.0));
        assert!((0.0..1.0).contains(&row.uniform));
        // Row 0's entry is left alone; token 99 is outside the vocabulary of 64.
        let got: Vec<(u32, u32, f32, f32, f32, f32)> =
            adjust.iter().map(|a| (a.row, a.token, a.bias, a.pos_scale, a.neg_scale, a.add)).collect();
        let rep = (0.5, 2.0);
        assert_eq!(
            got,
            vec![
                (0, 1, 0.0, 1.0, 1.0, 0.0),
                (1, 2, 0.0, 1.0, 1.0, f32::NEG_INFINITY),              // EOS banned (3 < min_tokens)
                (1, 3, 0.0, rep.0, rep.1, 0.0),                        // prompt
                (1, 5, 1.5, rep.0, rep.1, -(0.5 + 0.25)),              // bias, prompt and output once
                (1, 7, 0.0, rep.0, rep.1, 0.0),                        // prompt twice: once
                (1, 9, 0.0, rep.0, rep.1, -(0.5 + 0.25 * 2.0)),        // output twice
                (1, 30, 2.0, 1.0, 1.0, 0.0),                           // bias only
            ]
        );
        // Greedy rows draw nothing and say so.
        let mut g = Sampler::new(SamplingParams::new(1).expect("valid"));
        let mut none = Vec::new();
        let row = g.device_row(&SampleContext::default(), 0, 64, &mut none);
        assert_eq!((row.temperature, row.uniform, none.len()), (0.0, 0.0, 0));
    }

    #[test]
    fn a_long_history_costs_a_sort_not_a_quadratic_insert() {
        // 200k distinct output ids plus as many prompt ids: one entry each, sorted, in well
        // under a second (inserting each in place was O(k^2): minutes).
        let params = SamplingParams::new(1 << 20)
            .and_then(|p| p.with_repetition_penalty(1.3))
            .and_then(|p| p.with_frequency_penalty(0.5))
            .and_then(|p| p.with_temperature(1.0))
            .expect("valid");
        let prompt: Vec<u32> = (0..200_000u32).map(|i| (i * 7919) % 400_000).collect();
        let output: Vec<u32> = (0..200_000u32).map(|i| (i * 104_729 + 1) % 400_000).collect();
        let mut s = Sampler::new(params);
        let mut adjust = Vec::new();
        let t = std::time::Instant::now();
        s.device_row(&SampleContext { prompt: &prompt, output: &output, eos_ids: &[] }, 0, 400_000, &mut adjust);
        assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
        assert!(adjust.windows(2).all(|w| w[0].token < w[1].token), "sorted, one per token");
        let distinct: std::collections::BTreeSet<u32> = prompt.iter().chain(&output).copied().collect();
        assert_eq!(adjust.len(), distinct.len());
    }
}
