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

use std::collections::BTreeMap;

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
    /// adjustments onto `adjust`. Consumes one draw of the sampler's generator when the row is
    /// not greedy.
    pub fn device_row(&mut self, ctx: &SampleContext<'_>, row: u32, vocab: usize, adjust: &mut Vec<LogitAdjust>) -> RowSampling {
        let p = self.params().clone();
        let mut touched: BTreeMap<u32, LogitAdjust> = BTreeMap::new();
        // Same order as `Sampler::process`: bias, ban, repetition penalty, OpenAI penalties.
        for &(id, bias) in &p.logit_bias {
            if (id as usize) < vocab {
                touched_entry(&mut touched, row, id).bias += bias;
            }
        }
        if ctx.output.len() < p.min_tokens {
            for &id in ctx.eos_ids.iter().chain(&p.stop_token_ids) {
                if (id as usize) < vocab {
                    touched_entry(&mut touched, row, id).add = f32::NEG_INFINITY;
                }
            }
        }
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            for &id in ctx.prompt.iter().chain(ctx.output) {
                if (id as usize) < vocab {
                    let e = touched_entry(&mut touched, row, id);
                    (e.pos_scale, e.neg_scale) = (1.0 / r, r);
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
            for &id in ctx.output.iter().filter(|&&id| (id as usize) < vocab) {
                *counts.entry(id).or_default() += 1;
            }
            for (id, c) in counts {
                let e = touched_entry(&mut touched, row, id);
                // A ban stays a ban (-inf minus a penalty is still -inf).
                e.add -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
        adjust.extend(touched.into_values());
        let greedy = p.is_greedy() || p.top_k == Some(1);
        RowSampling {
            temperature: if greedy { 0.0 } else { p.temperature },
            top_k: p.top_k.map_or(0, |k| k.min(u32::MAX as usize) as u32),
            top_p: p.top_p,
            min_p: p.min_p,
            uniform: if greedy { 0.0 } else { self.uniform() },
        }
    }
}

fn touched_entry(touched: &mut BTreeMap<u32, LogitAdjust>, row: u32, token: u32) -> &mut LogitAdjust {
    touched.entry(token).or_insert(LogitAdjust { row, token, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: 0.0 })
}
