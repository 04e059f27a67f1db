//! LoRA training: [`TrainableModel`] is the decoder of `layers/` re-written in plain,
//! differentiable candle ops (the inference path's paged attention, fused add+RMSNorm,
//! in-place rotary and LoRA kernels have no gradients), over frozen f32 base weights with
//! LoRA A/B matrices as [`Var`]s. The training loop itself lives in the engine
//! (`flint_engine::finetune`); [`TrainableModel::save_peft`] writes the result as a PEFT
//! adapter that [`crate::LoraAdapter::load`] serves.
//!
//! Batches are right-padded `[B, T]` token ids with a `[B, T]` mask (1 real, 0 pad); every
//! sequence starts at position 0. Attention is computed batched as `[B, H, T, T]` scores with
//! a causal + key-padding mask (`ops::attention`). Each block is one graph node with a
//! hand-written backward (`ops`), which is what makes CPU training of small models usable.

mod ops;
mod peft;

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Device, Result as CResult, Tensor, Var};

use crate::{
    config::ModelConfig,
    error::{ModelError, Result},
    layers::rope::inv_freq,
    loader::Checkpoint,
    lora::TargetModule,
};

pub use peft::SplitMix64;

/// Which projections get a LoRA adapter, and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// Rank `r` of every adapter (1..=256).
    pub rank: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r` (PEFT without rsLoRA).
    pub alpha: f64,
    /// The projections trained (at least one).
    pub targets: BTreeSet<TargetModule>,
}

impl LoraSpec {
    /// The largest rank accepted: well past where LoRA stops paying off, and bounded so an
    /// adapter stays small next to the base model.
    pub const MAX_RANK: usize = 256;

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks the ranges; the error names the field (`lora.rank`, `lora.alpha`,
    /// `lora.targets`).
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.rank == 0 || self.rank > Self::MAX_RANK {
            return Err(("lora.rank", format!("{} must be between 1 and {}", self.rank, Self::MAX_RANK)));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(("lora.alpha", format!("{} must be a positive number", self.alpha)));
        }
        if self.targets.is_empty() {
            return Err(("lora.targets", "name at least one projection".into()));
        }
        Ok(())
    }
}

/// One frozen projection and, when targeted, its trainable LoRA pair.
struct Proj {
    /// `[out, in]`, as in the checkpoint.
    w: Tensor,
    b: Option<Tensor>,
    /// A `[r, in]`, B `[out, r]`.
    lora: Option<(Var, Var)>,
}

impl Proj {
    /// `x` `[N, in]` → `base(x) + scale · (x Aᵀ) Bᵀ`. Without `grad` the LoRA weights are
    /// read detached, so evaluation builds no graph.
    fn forward(&self, x: &Tensor, scale: f64, grad: bool) -> CResult<Tensor> {
        let Some((a, b)) = &self.lora else { return ops::linear(x, &self.w, self.b.as_ref(), None) };
        let (a, b) = if grad { (a.as_tensor().clone(), b.as_tensor().clone()) } else { (a.as_tensor().detach(), b.as_tensor().detach()) };
        ops::linear(x, &self.w, self.b.as_ref(), Some(ops::LoraWeights { a: &a, b: &b, scale }))
    }
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    /// Per-head q/k RMSNorm weights (Qwen3).
    qk_norm: Option<(Tensor, Tensor)>,
    /// Indexed by [`TargetModule::index`].
    projs: [Proj; 7],
}

/// What every layer of one forward pass shares.
struct Pass<'a> {
    b: usize,
    t: usize,
    /// Additive attention mask `[B, 1, T, T]`: 0 where allowed, -1e9 elsewhere.
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
    neg_sin: Tensor,
    grad: bool,
    cfg: &'a ModelConfig,
    scale: f64,
}

/// A base model with trainable LoRA adapters; see the module docs.
pub struct TrainableModel {
    cfg: ModelConfig,
    spec: LoraSpec,
    device: Device,
    embed: Tensor,
    /// `[V, H]`: the embedding matrix itself when the checkpoint ties them.
    lm_head: Tensor,
    norm: Tensor,
    layers: Vec<Layer>,
    /// `[max_position_embeddings, head_dim / 2]`, computed like the inference rope table.
    cos: Tensor,
    sin: Tensor,
}

impl TrainableModel {
    /// Loads the base weights of `dir` in f32 on `device` (frozen: plain tensors) and creates
    /// fresh adapters on `spec.targets` in every layer: B = 0, so the model starts equal to
    /// the base, and A drawn as PEFT does (`kaiming_uniform_(a=√5)`, i.e. uniform in
    /// ±1/√in) from [`SplitMix64`] seeded with `seed`, layer by layer, target by target in
    /// [`TargetModule`] order, row-major.
    pub fn load(dir: &Path, cfg: &ModelConfig, device: &Device, spec: &LoraSpec, seed: u64) -> Result<Self> {
        spec.check().map_err(|(field, reason)| ModelError::InvalidLoraSpec { field, reason })?;
        // A GGUF-backed base is dequantized here: the frozen weights are what the quantized
        // model computes with (dequantized blocks), in f32 for the gradients.
        let vb = Checkpoint::open(dir)?.var_builder(dir, DType::F32, device)?;
        let weights = |e| ModelError::Weights { dir: dir.to_owned(), source: e };
        let mut rng = SplitMix64::new(seed);
        let m = vb.pp("model");
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let embed = m.pp("embed_tokens").get((cfg.vocab_size, h), "weight").map_err(weights)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            vb.pp("lm_head").get((cfg.vocab_size, h), "weight").map_err(weights)?
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let l = m.pp("layers").pp(i);
            let mut proj = |module: TargetModule| -> Result<Proj> {
                let (d_in, d_out) = module.dims(cfg);
                let p = l.pp(module.block()).pp(module.name());
                let bias = match module {
                    TargetModule::Q | TargetModule::K | TargetModule::V => cfg.qkv_bias,
                    TargetModule::O => cfg.o_bias,
                    _ => false,
                };
                let w = p.get((d_out, d_in), "weight").map_err(weights)?;
                let b = if bias { Some(p.get(d_out, "bias").map_err(weights)?) } else { None };
                let lora = if spec.targets.contains(&module) {
                    let bound = 1.0 / (d_in as f64).sqrt();
                    let a: Vec<f32> = (0..spec.rank * d_in).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                    let a = Var::from_vec(a, (spec.rank, d_in), device)?;
                    let b = Var::zeros((d_out, spec.rank), DType::F32, device)?;
                    Some((a, b))
                } else {
                    None
                };
                Ok(Proj { w, b, lora })
            };
            let projs = [
                proj(TargetModule::Q)?,
                proj(TargetModule::K)?,
                proj(TargetModule::V)?,
                proj(TargetModule::O)?,
                proj(TargetModule::Gate)?,
                proj(TargetModule::Up)?,
                proj(TargetModule::Down)?,
            ];
            let norm = |name: &str, n: usize| l.pp(name).get(n, "weight").map_err(weights);
            let qk_norm = if cfg.qk_norm {
                let a = l.pp("self_attn");
                Some((a.pp("q_norm").get(d, "weight").map_err(weights)?, a.pp("k_norm").get(d, "weight").map_err(weights)?))
            } else {
                None
            };
            layers.push(Layer { input_norm: norm("input_layernorm", h)?, post_norm: norm("post_attention_layernorm", h)?, qk_norm, projs });
        }
        let norm = m.pp("norm").get(h, "weight").map_err(weights)?;
        let (cos, sin) = rope_tables(cfg, device)?;
        Ok(Self { cfg: cfg.clone(), spec: spec.clone(), device: device.clone(), embed, lm_head, norm, layers, cos, sin })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every LoRA parameter, in a fixed order: layer by layer, target by target in
    /// [`TargetModule`] order, A then B.
    pub fn vars(&self) -> Vec<Var> {
        self.adapters().flat_map(|(_, _, a, b)| [a.clone(), b.clone()]).collect()
    }

    /// `(layer, module, A, B)` of every adapter, in [`Self::vars`] order.
    fn adapters(&self) -> impl Iterator<Item = (usize, TargetModule, &Var, &Var)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            TargetModule::ALL.into_iter().filter_map(move |m| l.projs[m.index()].lora.as_ref().map(|(a, b)| (i, m, a, b)))
        })
    }

    /// Logits `[B, T, V]` (f32) of right-padded `ids` `u32 [B, T]` with `pad_mask` `[B, T]`
    /// (1 real token, 0 padding). Differentiable with respect to [`Self::vars`]. Rows of
    /// padding positions are computed but meaningless.
    pub fn forward(&self, ids: &Tensor, pad_mask: &Tensor) -> CResult<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden(ids, pad_mask, true)?;
        ops::linear(&h, &self.lm_head, None, None)?.reshape((b, t, self.cfg.vocab_size))
    }

    /// `Σᵢ weightsᵢ · CE(logits[rowsᵢ], targetsᵢ)` as a scalar: `rows` `u32 [N]` index the
    /// flattened `B·T` positions, `targets` `u32 [N]` are the tokens to predict there and
    /// `weights` `f32 [N]` their loss weights. Only the selected rows pay for the vocabulary
    /// projection. With `grad` false no graph is kept (evaluation).
    pub fn weighted_nll(&self, ids: &Tensor, pad_mask: &Tensor, rows: &Tensor, targets: &Tensor, weights: &Tensor, grad: bool) -> CResult<Tensor> {
        let h = self.hidden(ids, pad_mask, grad)?.index_select(rows, 0)?;
        let logits = ops::linear(&h, &self.lm_head, None, None)?;
        (ops::cross_entropy(&logits, targets)? * weights)?.sum_all()
    }

    /// The final-normed hidden states `[B·T, H]`.
    fn hidden(&self, ids: &Tensor, pad_mask: &Tensor, grad: bool) -> CResult<Tensor> {
        let (b, t) = ids.dims2()?;
        if pad_mask.dims() != [b, t] {
            candle_core::bail!("pad_mask has shape {:?}, expected [{b}, {t}] like ids", pad_mask.dims());
        }
        if t == 0 || t > self.cfg.max_position_embeddings {
            candle_core::bail!("sequence length {t} must be between 1 and max_position_embeddings ({})", self.cfg.max_position_embeddings);
        }
        let pass = Pass {
            b,
            t,
            mask: attention_mask(&pad_mask.to_dtype(DType::F32)?, t)?,
            cos: self.cos.narrow(0, 0, t)?,
            sin: self.sin.narrow(0, 0, t)?,
            neg_sin: self.sin.narrow(0, 0, t)?.neg()?,
            grad,
            cfg: &self.cfg,
            scale: self.spec.scale(),
        };
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        for layer in &self.layers {
            x = layer.forward(&x, &pass)?;
        }
        ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)
    }
}

impl Layer {
    /// One pre-norm decoder layer on the residual stream `x` `[B·T, H]`.
    fn forward(&self, x: &Tensor, p: &Pass) -> CResult<Tensor> {
        let cfg = p.cfg;
        let (b, t, d) = (p.b, p.t, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let proj = |m: TargetModule, x: &Tensor| self.projs[m.index()].forward(x, p.scale, p.grad);
        let h = ops::rms_norm(x, &self.input_norm, cfg.rms_norm_eps)?;
        let (q, k) = (proj(TargetModule::Q, &h)?, proj(TargetModule::K, &h)?);
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (ops::rms_norm(&q, qn, cfg.rms_norm_eps)?, ops::rms_norm(&k, kn, cfg.rms_norm_eps)?),
            None => (q, k),
        };
        // [B, T, heads, D], rotated by position.
        let q = ops::rope(&q, (b, t, nh, d), &p.cos, &p.sin, &p.neg_sin)?;
        let k = ops::rope(&k, (b, t, nkv, d), &p.cos, &p.sin, &p.neg_sin)?;
        let v = proj(TargetModule::V, &h)?.reshape((b, t, nkv, d))?;
        let attn = ops::attention(&q, &k, &v, &p.mask)?;
        let x = (x + proj(TargetModule::O, &attn)?)?;
        let h = ops::rms_norm(&x, &self.post_norm, cfg.rms_norm_eps)?;
        let act = ops::silu_mul(&proj(TargetModule::Gate, &h)?, &proj(TargetModule::Up, &h)?)?;
        x + proj(TargetModule::Down, &act)?
    }
}

/// `[B, 1, T, T]`: 0 where query i may attend key j (j ≤ i and j is a real token), -1e9
/// elsewhere. A large finite value rather than -inf keeps fully masked rows free of NaN.
fn attention_mask(pad_mask: &Tensor, t: usize) -> CResult<Tensor> {
    const NEG: f32 = -1e9;
    let causal: Vec<f32> = (0..t * t).map(|k| if k % t <= k / t { 0.0 } else { NEG }).collect();
    let causal = Tensor::from_vec(causal, (t, t), pad_mask.device())?;
    let b = pad_mask.dim(0)?;
    let keys = ((pad_mask - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
    keys.broadcast_add(&causal)
}

/// cos/sin `[max_position_embeddings, head_dim / 2]` exactly as the inference path
/// (`layers::rope::RotaryEmbedding`) computes them: `inv_freq` with the config's scaling,
/// multiplied by the position in f32.
fn rope_tables(cfg: &ModelConfig, device: &Device) -> CResult<(Tensor, Tensor)> {
    let inv: Vec<f32> = inv_freq(cfg).iter().map(|&f| f as f32).collect();
    let (max, half) = (cfg.max_position_embeddings, inv.len());
    let (mut cos, mut sin) = (Vec::with_capacity(max * half), Vec::with_capacity(max * half));
    for p in 0..max {
        for &f in &inv {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (max, half), device)?, Tensor::from_vec(sin, (max, half), device)?))
}

#[cfg(test)]
mod tests;
