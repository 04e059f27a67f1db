//! [`SamplingParams`]: every knob of the sampler, range-checked once by the `with_*` setters so
//! the sampler itself never has to validate (or fail) per token. Every list a request can
//! send has a documented cap, and the lists are shared (`Arc`), not copied, by the `n` samples
//! of a request and every clone.

use std::sync::Arc;

use crate::error::{EngineError, Result};

/// Most parallel samples one request may ask for (`n`).
pub const MAX_N: usize = 128;
/// Most alternatives per token a request may ask for (`logprobs`), as OpenAI.
pub const MAX_LOGPROBS: usize = 20;
/// Most stop strings per request (`stop`).
pub const MAX_STOP: usize = 16;
/// Longest stop string, in bytes: the stop matcher holds back up to this much text per
/// sample, and its work per token grows with it.
pub const MAX_STOP_BYTES: usize = 1024;
/// Most `stop_token_ids` per request.
pub const MAX_STOP_TOKEN_IDS: usize = 1024;
/// Most `logit_bias` entries per request, as OpenAI.
pub const MAX_LOGIT_BIAS_ENTRIES: usize = 300;
/// Largest absolute value of one `logit_bias` entry, as OpenAI.
pub const MAX_LOGIT_BIAS: f32 = 100.0;
/// Largest absolute value of `presence_penalty` / `frequency_penalty`, as OpenAI.
pub const MAX_OPENAI_PENALTY: f32 = 2.0;

/// How to pick tokens. Build with [`SamplingParams::new`] (greedy, nothing else enabled) and the
/// `with_*` setters, which reject out-of-range values naming the OpenAI field; the fields are
/// private, so a value of this type is always valid (token ids against a vocabulary excepted:
/// see [`SamplingParams::check_vocab`]). Read them with the getters of the same names.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Number of parallel samples of the same prompt (1..=128).
    pub(super) n: usize,
    /// Maximum number of tokens to generate (>= 1, >= `min_tokens`).
    pub(super) max_tokens: usize,
    /// End-of-sequence and stop tokens are banned until this many tokens were generated.
    pub(super) min_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub(super) temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub(super) top_p: f32,
    /// Keep only the `top_k` most likely tokens; `None` keeps all.
    pub(super) top_k: Option<usize>,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 is off.
    pub(super) min_p: f32,
    /// Hugging Face repetition penalty over prompt and output tokens; 1 is off.
    pub(super) repetition_penalty: f32,
    /// OpenAI presence penalty over output tokens (subtracted once per seen token).
    pub(super) presence_penalty: f32,
    /// OpenAI frequency penalty over output tokens (subtracted once per occurrence).
    pub(super) frequency_penalty: f32,
    /// Added to the raw logit of each listed token id (unique ids).
    pub(super) logit_bias: Arc<[(u32, f32)]>,
    /// Token ids that end generation (besides the model's end-of-sequence tokens).
    pub(super) stop_token_ids: Arc<[u32]>,
    /// Strings that end generation; the engine matches them on the detokenized text.
    pub(super) stop: Arc<[String]>,
    /// Return the chosen token's log-probability and this many top alternatives; `None` skips
    /// the log-softmax entirely.
    pub(super) logprobs: Option<usize>,
    /// Seed of this request's random generator; `None` draws one.
    pub(super) seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub(super) ignore_eos: bool,
}

/// The error of a setter: the OpenAI field name and a reason giving the allowed range and the
/// value received, so an API client can fix its request from the message alone.
fn invalid(field: &'static str, reason: String) -> EngineError {
    EngineError::InvalidParameter { field, reason }
}

/// Checks that `x` is finite and within `[lo, hi]`.
fn check_range(field: &'static str, x: f32, lo: f32, hi: f32) -> Result<f32> {
    if x.is_finite() && (lo..=hi).contains(&x) {
        Ok(x)
    } else {
        Err(invalid(field, format!("must be in [{lo}, {hi}], got {x}")))
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens, one sample, every other knob off.
    pub fn new(max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 {
            return Err(invalid("max_tokens", "must be >= 1, got 0".into()));
        }
        Ok(Self {
            n: 1,
            max_tokens,
            min_tokens: 0,
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Arc::new([]),
            stop_token_ids: Arc::new([]),
            stop: Arc::new([]),
            logprobs: None,
            seed: None,
            ignore_eos: false,
        })
    }

    /// Number of parallel samples, 1..=128 (each gets its own [`crate::sampling::Sampler::for_sample`]).
    pub fn with_n(mut self, n: usize) -> Result<Self> {
        if !(1..=MAX_N).contains(&n) {
            return Err(invalid("n", format!("must be in [1, {MAX_N}], got {n}")));
        }
        self.n = n;
        Ok(self)
    }

    /// Maximum output length: >= 1 and not below `min_tokens`.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 || max_tokens < self.min_tokens {
            let lo = self.min_tokens.max(1);
            return Err(invalid("max_tokens", format!("must be >= {lo} (and >= min_tokens), got {max_tokens}")));
        }
        self.max_tokens = max_tokens;
        Ok(self)
    }

    /// Minimum output length before end-of-sequence / stop tokens may be chosen; at most
    /// `max_tokens`.
    pub fn with_min_tokens(mut self, min_tokens: usize) -> Result<Self> {
        if min_tokens > self.max_tokens {
            let max = self.max_tokens;
            return Err(invalid("min_tokens", format!("must be in [0, max_tokens = {max}], got {min_tokens}")));
        }
        self.min_tokens = min_tokens;
        Ok(self)
    }

    /// Softmax temperature, >= 0; 0 is greedy.
    pub fn with_temperature(mut self, t: f32) -> Result<Self> {
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid("temperature", format!("must be finite and >= 0, got {t}")));
        }
        self.temperature = t;
        Ok(self)
    }

    /// Nucleus mass in (0, 1]; 1 is off.
    pub fn with_top_p(mut self, p: f32) -> Result<Self> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid("top_p", format!("must be in (0, 1], got {p}")));
        }
        self.top_p = p;
        Ok(self)
    }

    /// Number of most likely tokens to keep, >= 1; `None` keeps all.
    pub fn with_top_k(mut self, k: Option<usize>) -> Result<Self> {
        if k == Some(0) {
            return Err(invalid("top_k", "must be >= 1 (or unset), got 0".into()));
        }
        self.top_k = k;
        Ok(self)
    }

    /// Relative probability floor in [0, 1]; 0 is off.
    pub fn with_min_p(mut self, p: f32) -> Result<Self> {
        self.min_p = check_range("min_p", p, 0.0, 1.0)?;
        Ok(self)
    }

    /// Hugging Face repetition penalty, finite and > 0; 1 is off, > 1 discourages repeats.
    pub fn with_repetition_penalty(mut self, r: f32) -> Result<Self> {
        if !(r.is_finite() && r > 0.0) {
            return Err(invalid("repetition_penalty", format!("must be finite and > 0, got {r}")));
        }
        self.repetition_penalty = r;
        Ok(self)
    }

    /// OpenAI presence penalty in [-2, 2].
    pub fn with_presence_penalty(mut self, p: f32) -> Result<Self> {
        self.presence_penalty = check_range("presence_penalty", p, -MAX_OPENAI_PENALTY, MAX_OPENAI_PENALTY)?;
        Ok(self)
    }

    /// OpenAI frequency penalty in [-2, 2].
    pub fn with_frequency_penalty(mut self, p: f32) -> Result<Self> {
        self.frequency_penalty = check_range("frequency_penalty", p, -MAX_OPENAI_PENALTY, MAX_OPENAI_PENALTY)?;
        Ok(self)
    }

    /// Per-token additive biases: at most [`MAX_LOGIT_BIAS_ENTRIES`], each in [-100, 100]. Ids
    /// must be unique: OpenAI's field is a JSON object, so a repeated id can only be a caller
    /// bug (and two entries would silently add up past the range).
    pub fn with_logit_bias(mut self, bias: Vec<(u32, f32)>) -> Result<Self> {
        if bias.len() > MAX_LOGIT_BIAS_ENTRIES {
            return Err(invalid("logit_bias", format!("at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {}", bias.len())));
        }
        if let Some(&(id, b)) = bias.iter().find(|(_, b)| !(b.is_finite() && b.abs() <= MAX_LOGIT_BIAS)) {
            let reason = format!("bias of token {id} must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], got {b}");
            return Err(invalid("logit_bias", reason));
        }
        let mut ids: Vec<u32> = bias.iter().map(|&(id, _)| id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("logit_bias", format!("token {} is listed more than once", w[0])));
        }
        self.logit_bias = bias.into();
        Ok(self)
    }

    /// Token ids that end generation, at most [`MAX_STOP_TOKEN_IDS`]; checked against the
    /// vocabulary by [`Self::check_vocab`].
    pub fn with_stop_token_ids(mut self, ids: Vec<u32>) -> Result<Self> {
        if ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(invalid("stop_token_ids", format!("at most {MAX_STOP_TOKEN_IDS} ids, got {}", ids.len())));
        }
        self.stop_token_ids = ids.into();
        Ok(self)
    }

    /// Stop strings: at most [`MAX_STOP`], each non-empty (an empty string would match
    /// everywhere) and at most [`MAX_STOP_BYTES`] long.
    pub fn with_stop(mut self, stop: Vec<String>) -> Result<Self> {
        if stop.len() > MAX_STOP {
            return Err(invalid("stop", format!("at most {MAX_STOP} strings, got {}", stop.len())));
        }
        if let Some(i) = stop.iter().position(String::is_empty) {
            return Err(invalid("stop", format!("strings must be non-empty, entry {i} is empty")));
        }
        if let Some(i) = stop.iter().position(|s| s.len() > MAX_STOP_BYTES) {
            let len = stop[i].len();
            return Err(invalid("stop", format!("strings must be at most {MAX_STOP_BYTES} bytes, entry {i} has {len}")));
        }
        self.stop = stop.into();
        Ok(self)
    }

    /// Log-probabilities: `Some(k)` returns the chosen token's and the `k` (0..=20) most likely
    /// alternatives per token.
    pub fn with_logprobs(mut self, logprobs: Option<usize>) -> Result<Self> {
        if let Some(k) = logprobs.filter(|&k| k > MAX_LOGPROBS) {
            return Err(invalid("logprobs", format!("must be in [0, {MAX_LOGPROBS}], got {k}")));
        }
        self.logprobs = logprobs;
        Ok(self)
    }

    pub fn with_seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_ignore_eos(mut self, ignore: bool) -> Self {
        self.ignore_eos = ignore;
        self
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn min_tokens(&self) -> usize {
        self.min_tokens
    }

    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    pub fn top_p(&self) -> f32 {
        self.top_p
    }

    pub fn top_k(&self) -> Option<usize> {
        self.top_k
    }

    pub fn min_p(&self) -> f32 {
        self.min_p
    }

    pub fn repetition_penalty(&self) -> f32 {
        self.repetition_penalty
    }

    pub fn presence_penalty(&self) -> f32 {
        self.presence_penalty
    }

    pub fn frequency_penalty(&self) -> f32 {
        self.frequency_penalty
    }

    /// `(token id, bias)`, ids unique.
    pub fn logit_bias(&self) -> &[(u32, f32)] {
        &self.logit_bias
    }

    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// The stop strings, shared by every sample and clone of these parameters.
    pub fn stop(&self) -> &Arc<[String]> {
        &self.stop
    }

    pub fn logprobs(&self) -> Option<usize> {
        self.logprobs
    }

    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    pub fn ignore_eos(&self) -> bool {
        self.ignore_eos
    }

    /// The stop token ids, shared (the scheduler keeps them per sample without a copy).
    pub(crate) fn shared_stop_token_ids(&self) -> Arc<[u32]> {
        self.stop_token_ids.clone()
    }

    /// Temperature 0: the sampler takes the argmax (after penalties, bias and masking).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Rejects token ids outside a vocabulary of `vocab_size` tokens in `logit_bias` and
    /// `stop_token_ids`; the setters cannot, as they do not know the model.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        let out = |field: &'static str, id: u32| {
            invalid(field, format!("token id must be in [0, {vocab_size}) (the vocabulary), got {id}"))
        };
        if let Some(&(id, _)) = self.logit_bias.iter().find(|&&(id, _)| id as usize >= vocab_size) {
            return Err(out("logit_bias", id));
        }
        if let Some(&id) = self.stop_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(out("stop_token_ids", id));
        }
        Ok(())
    }
}
