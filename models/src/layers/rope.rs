//! Rotary position embedding (HF's "rotate half" layout), with Llama-3 and linear scaling.

use candle_core::{DType, Device, Result, Tensor};

use crate::config::{ModelConfig, RopeScaling};

/// cos/sin tables `[max_position_embeddings, head_dim / 2]`, gathered per token by position.
#[derive(Debug)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
}

/// The inverse frequencies of `cfg`, scaling applied, as HF computes them.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> =
        (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3(s)) => {
            // Long wavelengths are interpolated by `factor`, short ones kept, the band between
            // blended smoothly (Llama 3.1's "llama3" rope_type).
            let old = s.original_max_position_embeddings as f64;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / s.factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl RotaryEmbedding {
    pub fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inv_freq(cfg);
        let max = cfg.max_position_embeddings;
        let half = inv.len();
        // f32 like HF: positions and frequencies are multiplied in float32 there.
        let inv32: Vec<f32> = inv.iter().map(|&f| f as f32).collect();
        let mut cos = Vec::with_capacity(max * half);
        let mut sin = Vec::with_capacity(max * half);
        for p in 0..max {
            for &f in &inv32 {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max, half), device)?.to_dtype(dtype)?,
        })
    }

    /// The cos/sin rows of one batch's token positions (`u32 [T]`); gathered once per
    /// forward pass and shared by every layer.
    pub fn for_positions(&self, positions: &Tensor) -> Result<RopeRows> {
        Ok(RopeRows { cos: self.cos.index_select(positions, 0)?, sin: self.sin.index_select(positions, 0)? })
    }
}

/// cos/sin `[T, head_dim / 2]` for the tokens of one batch.
#[derive(Debug)]
pub struct RopeRows {
    cos: Tensor,
    sin: Tensor,
}

impl RopeRows {
    /// Rotates `q` `[T, heads, d]` and `k` `[T, kv_heads, d]` by each token's position, in
    /// place: both must be contiguous tensors nothing else reads (fresh projection outputs).
    pub fn apply_inplace(&self, q: &Tensor, k: &Tensor) -> Result<()> {
        flint_kernels::rotary_inplace(q, &self.cos, &self.sin)?;
        flint_kernels::rotary_inplace(k, &self.cos, &self.sin)
    }
}
