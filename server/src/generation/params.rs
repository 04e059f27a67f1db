//! [`SamplingFields`]: the sampling settings of a request, whichever protocol it came in, and
//! their one mapping to checked engine parameters ([`sampling_params`]).

use std::collections::HashMap;

use flint_engine::{sampling::MAX_LOGPROBS, SamplingParams};

use super::{GenError, Result};

/// The sampling fields of a request (OpenAI's, vLLM's extensions, Ollama's `options`), as the
/// client gave them; `None` means the protocol's default.
#[derive(Clone, Debug, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, OpenAI's JSON keys) → bias.
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<i64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub stop_token_ids: Option<Vec<i64>>,
}

fn non_negative(field: &'static str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| GenError::invalid(field, format!("`{field}` must be >= 0, got {v}")))
}

/// `n` as asked (1 when absent), checked before any work so that admission can count it.
pub fn requested_n(f: &SamplingFields) -> Result<usize> {
    match f.n {
        None => Ok(1),
        Some(n) if n < 1 => Err(GenError::invalid("n", format!("`n` must be >= 1, got {n}"))),
        Some(n) => usize::try_from(n).map_err(|_| GenError::invalid("n", format!("`n` is too large: {n}"))),
    }
}

/// Checks a top-logprobs count against the engine's one limit (`field` names it).
pub fn logprobs_count(field: &'static str, k: i64) -> Result<usize> {
    usize::try_from(k)
        .ok()
        .filter(|&k| k <= MAX_LOGPROBS)
        .ok_or_else(|| GenError::invalid(field, format!("`{field}` must be in 0..={MAX_LOGPROBS}, got {k}")))
}

/// The request's sampling fields as checked engine parameters. `max_tokens` defaults to what
/// is left of the context after the prompt, as in vLLM.
pub fn sampling_params(
    f: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
    prompt_len: usize,
    max_model_len: usize,
) -> Result<SamplingParams> {
    let max_tokens = match max_tokens {
        Some(m) if m < 1 => return Err(GenError::invalid("max_tokens", format!("`max_tokens` must be >= 1, got {m}"))),
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        None => max_model_len.saturating_sub(prompt_len).max(1),
    };
    let mut p = SamplingParams::new(max_tokens)?.with_temperature(f.temperature.unwrap_or(1.0))?;
    if let Some(v) = f.top_p {
        p = p.with_top_p(v)?;
    }
    p = p.with_n(requested_n(f)?)?;
    if let Some(k) = f.top_k {
        // vLLM: -1 (or 0) means no top-k.
        p = p.with_top_k(if k <= 0 { None } else { Some(usize::try_from(k).unwrap_or(usize::MAX)) })?;
    }
    if let Some(v) = f.min_p {
        p = p.with_min_p(v)?;
    }
    if let Some(v) = f.repetition_penalty {
        p = p.with_repetition_penalty(v)?;
    }
    if let Some(v) = f.presence_penalty {
        p = p.with_presence_penalty(v)?;
    }
    if let Some(v) = f.frequency_penalty {
        p = p.with_frequency_penalty(v)?;
    }
    if let Some(bias) = &f.logit_bias {
        let mut list = Vec::with_capacity(bias.len());
        for (k, &v) in bias {
            let id: u32 = k
                .parse()
                .map_err(|_| GenError::invalid("logit_bias", format!("`logit_bias` keys are token ids, got `{k}`")))?;
            list.push((id, v));
        }
        list.sort_by_key(|&(id, _)| id);
        p = p.with_logit_bias(list)?;
    }
    if let Some(m) = f.min_tokens {
        p = p.with_min_tokens(non_negative("min_tokens", m)?)?;
    }
    if let Some(ids) = &f.stop_token_ids {
        let ids = ids
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| GenError::invalid("stop_token_ids", format!("bad token id {i}"))))
            .collect::<Result<Vec<u32>>>()?;
        p = p.with_stop_token_ids(ids)?;
    }
    if let Some(stop) = &f.stop {
        p = p.with_stop(stop.clone())?;
    }
    if let Some(seed) = f.seed {
        p = p.with_seed(Some(seed as u64));
    }
    p = p.with_ignore_eos(f.ignore_eos.unwrap_or(false)).with_logprobs(logprobs)?;
    Ok(p)
}
