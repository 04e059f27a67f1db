//! Sampling parameters (checked once, at construction) and the sampler that turns a row of
//! logits into a token.
//!
//! - [`SamplingParams`]: the OpenAI/vLLM knobs (temperature, top-k/p, min-p, penalties, logit
//!   bias, `min_tokens`, stop conditions, logprobs, `n`, seed), each range-checked by its setter.
//! - [`Sampler`]: one sample's picker, with its own seeded generator and scratch buffers;
//!   [`Sampler::sample`] takes a logits row and a [`SampleContext`] (token history, EOS ids) and
//!   returns a [`SampledToken`] (id, raw logprob, top alternatives).

mod params;
mod sampler;
#[cfg(test)]
mod tests;

pub use params::{SamplingParams, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_N, MAX_OPENAI_PENALTY, MAX_STOP};
pub use sampler::{argmax, SampleContext, SampledToken, Sampler};
