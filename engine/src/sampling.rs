//! Sampling parameters (checked once, at construction) and the sampler that turns a row of
//! logits into a token.

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// How to pick tokens. Build with [`SamplingParams::new`] (greedy) and the `with_*` setters,
/// which reject out-of-range values naming the field.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Maximum number of tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Seed of this request's random generator; `None` draws one.
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn new(max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 {
            return Err(EngineError::InvalidParameter { field: "max_tokens", reason: "must be >= 1".into() });
        }
        Ok(Self { max_tokens, temperature: 0.0, top_p: 1.0, top_k: None, seed: None, ignore_eos: false })
    }

    pub fn with_temperature(mut self, t: f32) -> Result<Self> {
        if !(t.is_finite() && t >= 0.0) {
            return Err(EngineError::InvalidParameter { field: "temperature", reason: format!("{t} must be >= 0") });
        }
        self.temperature = t;
        Ok(self)
    }

    pub fn with_top_p(mut self, p: f32) -> Result<Self> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(EngineError::InvalidParameter { field: "top_p", reason: format!("{p} must be in (0, 1]") });
        }
        self.top_p = p;
        Ok(self)
    }

    pub fn with_top_k(mut self, k: Option<usize>) -> Result<Self> {
        if k == Some(0) {
            return Err(EngineError::InvalidParameter { field: "top_k", reason: "must be >= 1".into() });
        }
        self.top_k = k;
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

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Picks tokens for one request; owns its random generator so seeded runs repeat.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// Index of the largest value; the first one on ties (as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.is_greedy() || p.top_k == Some(1) {
            return argmax(logits);
        }
        // Candidates sorted by logit, cut by top-k, then softmax with temperature, then top-p.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if let Some(k) = p.top_k {
            idx.truncate(k.max(1));
        }
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f32> =
            idx.iter().map(|&i| ((logits[i as usize] - max) / p.temperature).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|&x| {
                    cum += x;
                    cum >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &x) in probs.iter().enumerate() {
            if r < x {
                return idx[i];
            }
            r -= x;
        }
        idx[probs.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplingParams::new(1).unwrap());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let params = SamplingParams::new(1).unwrap().with_temperature(1.0).unwrap().with_seed(Some(7));
        let logits = [1.0, 1.1, 0.9, 1.05, -5.0];
        let a: Vec<u32> = { let mut s = Sampler::new(params.clone()); (0..50).map(|_| s.sample(&logits)).collect() };
        let b: Vec<u32> = { let mut s = Sampler::new(params.clone()); (0..50).map(|_| s.sample(&logits)).collect() };
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        let mut k2 = Sampler::new(params.with_top_k(Some(2)).unwrap());
        assert!((0..100).all(|_| matches!(k2.sample(&logits), 1 | 3)));
    }

    #[test]
    fn out_of_range_parameters_name_the_field() {
        assert!(SamplingParams::new(0).unwrap_err().to_string().contains("max_tokens"));
        let p = SamplingParams::new(1).unwrap();
        assert!(p.clone().with_temperature(-1.0).unwrap_err().to_string().contains("temperature"));
        assert!(p.clone().with_top_p(0.0).unwrap_err().to_string().contains("top_p"));
        assert!(p.with_top_k(Some(0)).unwrap_err().to_string().contains("top_k"));
    }
}
