//! [`Proj`]: one or more projections of the decoder (q/k/v/o, gate/up/down) that read the same
//! input, run as a single matmul, and can add per-token LoRA deltas to each of them.
//!
//! The base weight is the checkpoint's projections concatenated along the output dim once at
//! load (`q|k|v`, `gate|up`): one matmul per layer step instead of three or two, and the output
//! is split by column range afterwards. LoRA stays per checkpoint module ("part"), as PEFT
//! adapters target them: each part has its own stacked slot tensors (`A [slots, max_rank, in]`
//! and B transposed, `[slots, max_rank, out_part]`, zero-padded past each adapter's rank); each
//! token picks its slot, so one pass serves many adapters and the base weights are never
//! modified.
//!
//! On a quantized model the base is a [`QMatMul`] per run of same-typed parts (q|k|v fuse when
//! the file stores all three in one type; a Q4_K_M file often keeps v in Q6_K, which then runs
//! as its own matmul), with the bias added after. LoRA is unchanged: the deltas are f32 and
//! added to whatever the base computed.

use std::sync::Mutex;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Linear;
use flint_kernels::{lora_delta, LoraTokens, SlotParams};

use crate::layers::{
    qlinear::QLinear,
    weights::{QuantRows, Vb},
};
use crate::lora::TargetModule;

#[derive(Debug)]
struct LoraStack {
    a: Tensor,
    b: Tensor,
    /// Per slot: the adapter's scale and rank in this projection (scale 0: slot unused here).
    params: Mutex<Vec<SlotParams>>,
}

impl LoraStack {
    fn params(&self) -> Result<std::sync::MutexGuard<'_, Vec<SlotParams>>> {
        self.params.lock().map_err(|_| candle_core::Error::msg("LoRA slot table poisoned"))
    }
}

/// One checkpoint projection inside a [`Proj`]: the next `d_out` output columns after the
/// parts before it.
#[derive(Debug)]
struct Part {
    module: TargetModule,
    d_out: usize,
    lora: Option<LoraStack>,
}

/// The frozen base weight of a [`Proj`].
#[derive(Debug)]
enum Base {
    Dense(Linear),
    /// Quantized matmuls over consecutive column ranges (their widths), then the bias.
    Quant { groups: Vec<(QLinear, usize)>, bias: Option<Tensor> },
}

impl Base {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Base::Dense(l) => l.forward(x),
            Base::Quant { groups, bias } => {
                let mut outs = groups.iter().map(|(m, _)| m.forward(x)).collect::<Result<Vec<_>>>()?;
                let y = if outs.len() == 1 { outs.swap_remove(0) } else { Tensor::cat(&outs, 1)? };
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Proj {
    base: Base,
    d_in: usize,
    parts: Vec<Part>,
}

impl Proj {
    /// A single checkpoint projection (`vb` holds its `weight` `[d_out, d_in]` and `bias`).
    pub fn load(d_in: usize, d_out: usize, bias: bool, module: TargetModule, vb: Vb) -> Result<Self> {
        Self::load_fused(d_in, bias, &[(module, d_out, vb)])
    }

    /// Projections of one input fused into one: reads each part's `weight` `[d_out, d_in]` (and
    /// `bias` `[d_out]` when `bias`) and concatenates them along the output dim, in order. The
    /// per-part tensors are dropped once the concatenation exists. When the source quantizes
    /// every part, the base stays quantized.
    pub fn load_fused(d_in: usize, bias: bool, parts: &[(TargetModule, usize, Vb)]) -> Result<Self> {
        if parts.is_empty() {
            candle_core::bail!("Proj::load_fused: no parts");
        }
        let layout: Vec<Part> =
            parts.iter().map(|(module, d_out, _)| Part { module: *module, d_out: *d_out, lora: None }).collect();
        let mut biases = Vec::with_capacity(parts.len());
        if bias {
            for (_, d_out, vb) in parts {
                biases.push(vb.get(*d_out, "bias")?);
            }
        }
        let bias = match biases.len() {
            0 => None,
            1 => biases.pop(),
            _ => Some(Tensor::cat(&biases, 0)?),
        };
        let mut quant = Vec::with_capacity(parts.len());
        for (_, d_out, vb) in parts {
            match vb.quant_linear((*d_out, d_in), "weight")? {
                Some(q) => quant.push(q),
                None => break,
            }
        }
        let device = parts[0].2.device().clone();
        let base = if quant.len() == parts.len() {
            Base::Quant { groups: quant_groups(quant, &device)?, bias }
        } else {
            let mut weights =
                parts.iter().map(|(_, d_out, vb)| vb.get((*d_out, d_in), "weight")).collect::<Result<Vec<_>>>()?;
            // A single part keeps its tensor as loaded (no copy).
            let weight = if weights.len() == 1 { weights.swap_remove(0) } else { Tensor::cat(&weights, 0)? };
            Base::Dense(Linear::new(weight, bias))
        };
        Ok(Self { base, d_in, parts: layout })
    }

    /// Whether the base weight is quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.base, Base::Quant { .. })
    }

    /// The checkpoint modules this projection computes, in output-column order.
    pub fn modules(&self) -> impl Iterator<Item = TargetModule> + '_ {
        self.parts.iter().map(|p| p.module)
    }

    /// `x` `[T, in]` → `[T, Σ out]` (the parts side by side), plus each token's LoRA delta on
    /// each part's columns when `lora` names slots.
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraTokens>) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let Some(tokens) = lora.filter(|t| !t.is_empty()) else { return Ok(y) };
        let mut deltas = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let delta = match &part.lora {
                Some(stack) => {
                    // Copied out so the lock is not held across the kernel.
                    let params = stack.params()?.clone();
                    if params.iter().all(|p| p.scale == 0.0) {
                        None
                    } else {
                        Some(lora_delta(x, &stack.a, &stack.b, tokens, &params)?)
                    }
                }
                None => None,
            };
            deltas.push(delta);
        }
        if deltas.iter().all(Option::is_none) {
            return Ok(y);
        }
        // One add over the whole output: parts without an active slot contribute zeros, which
        // leaves their columns exactly as the base computed them.
        let t = y.dim(0)?;
        let mut cols = deltas
            .into_iter()
            .zip(&self.parts)
            .map(|(d, p)| d.map_or_else(|| Tensor::zeros((t, p.d_out), y.dtype(), y.device()), Ok))
            .collect::<Result<Vec<_>>>()?;
        let delta = if cols.len() == 1 { cols.swap_remove(0) } else { Tensor::cat(&cols, 1)? };
        y + delta
    }

    /// Allocates `slots` empty LoRA slots of rank up to `max_rank` for every part.
    pub fn enable_lora(&mut self, slots: usize, max_rank: usize, dtype: DType, device: &Device) -> Result<()> {
        for part in &mut self.parts {
            part.lora = Some(LoraStack {
                a: Tensor::zeros((slots, max_rank, self.d_in), dtype, device)?,
                b: Tensor::zeros((slots, max_rank, part.d_out), dtype, device)?,
                params: Mutex::new(vec![SlotParams::default(); slots]),
            });
        }
        Ok(())
    }

    /// Writes `pair` (A `[r, in]`, B `[out, r]` of `module`, any float dtype, host or device)
    /// into `slot` with `scale`; `None` leaves the slot unused by that module.
    pub fn set_slot(&self, module: TargetModule, slot: usize, pair: Option<(&Tensor, &Tensor)>, scale: f32) -> Result<()> {
        let Some(part) = self.parts.iter().find(|p| p.module == module) else {
            candle_core::bail!("{module:?} is not part of this projection")
        };
        let Some(stack) = &part.lora else { candle_core::bail!("LoRA is not enabled on this model") };
        let (slots, max_rank, _) = stack.a.dims3()?;
        if slot >= slots {
            candle_core::bail!("LoRA slot {slot} out of range ({slots} slots)");
        }
        let mut params = stack.params()?;
        let Some((a, b)) = pair else {
            params[slot] = SlotParams::default();
            return Ok(());
        };
        let (d_in, d_out) = (self.d_in, part.d_out);
        let r = a.dim(0)?;
        if r > max_rank || a.dims() != [r, d_in] || b.dims() != [d_out, r] {
            candle_core::bail!("LoRA weights A {:?} / B {:?} do not fit {module:?} (max rank {max_rank})", a.shape(), b.shape());
        }
        let (dtype, dev) = (stack.a.dtype(), stack.a.device().clone());
        let pad_a = Tensor::zeros((max_rank - r, d_in), DType::F32, a.device())?;
        let pad_b = Tensor::zeros((max_rank - r, d_out), DType::F32, b.device())?;
        let a = Tensor::cat(&[&a.to_dtype(DType::F32)?, &pad_a], 0)?;
        let b = Tensor::cat(&[&b.to_dtype(DType::F32)?.t()?, &pad_b], 0)?;
        stack.a.slice_set(&a.to_dtype(dtype)?.to_device(&dev)?.unsqueeze(0)?, 0, slot)?;
        stack.b.slice_set(&b.to_dtype(dtype)?.to_device(&dev)?.unsqueeze(0)?, 0, slot)?;
        params[slot] = SlotParams { scale, rank: r as u32 };
        Ok(())
    }
}

/// Consecutive parts of one type fused by row concatenation, each run one matmul.
fn quant_groups(parts: Vec<QuantRows>, device: &Device) -> Result<Vec<(QLinear, usize)>> {
    let mut runs: Vec<Vec<QuantRows>> = Vec::new();
    for p in parts {
        match runs.last_mut() {
            Some(run) if run[0].dtype == p.dtype => run.push(p),
            _ => runs.push(vec![p]),
        }
    }
    runs.into_iter()
        .map(|run| {
            let rows = QuantRows::concat(run)?;
            let width = rows.rows;
            Ok((QLinear::new(&rows, device)?, width))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flint_kernels::NO_SLOT;

    use super::*;

    fn rand(seed: u64, shape: &[usize]) -> Tensor {
        flint_kernels::testing::lcg_tensor(seed, shape, -1.0, 1.0)
    }

    /// q/k/v weights and biases under their checkpoint names.
    fn qkv_vb(d_in: usize, outs: [usize; 3]) -> Vb<'static> {
        let mut t = HashMap::new();
        for (i, (name, d_out)) in ["q_proj", "k_proj", "v_proj"].into_iter().zip(outs).enumerate() {
            t.insert(format!("{name}.weight"), rand(10 + i as u64, &[d_out, d_in]));
            t.insert(format!("{name}.bias"), rand(20 + i as u64, &[d_out]));
        }
        candle_nn::VarBuilder::from_tensors(t, DType::F32, &Device::Cpu).into()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0));
        d.and_then(|d| d.to_scalar::<f32>()).expect("diff")
    }

    /// The fused projection equals the three separate ones, with LoRA on some parts only and
    /// tokens in different slots (the per-part deltas land in their own columns).
    #[test]
    fn fused_matches_separate_projections_with_per_part_lora() {
        let (d_in, outs, slots, max_rank) = (12, [8, 4, 4], 3, 4);
        let vb = qkv_vb(d_in, outs);
        let modules = [TargetModule::Q, TargetModule::K, TargetModule::V];
        let parts: Vec<_> = modules.iter().zip(outs).map(|(&m, d)| (m, d, vb.pp(m.name()))).collect();
        let mut fused = Proj::load_fused(d_in, true, &parts).expect("fused");
        let mut single: Vec<Proj> = parts
            .iter()
            .map(|(m, d, vb)| Proj::load(d_in, *d, true, *m, vb.clone()).expect("single"))
            .collect();
        assert_eq!(fused.modules().collect::<Vec<_>>(), modules);
        fused.enable_lora(slots, max_rank, DType::F32, &Device::Cpu).expect("lora");
        for p in &mut single {
            p.enable_lora(slots, max_rank, DType::F32, &Device::Cpu).expect("lora");
        }
        // Slot 0: q and v (rank 2); slot 1: k only (rank 4); slot 2 empty.
        let pairs = [(0, TargetModule::Q, 2), (0, TargetModule::V, 2), (1, TargetModule::K, 4)];
        for (i, &(slot, m, r)) in pairs.iter().enumerate() {
            let d_out = outs[m.index()];
            let (a, b) = (rand(30 + i as u64, &[r, d_in]), rand(40 + i as u64, &[d_out, r]));
            fused.set_slot(m, slot, Some((&a, &b)), 0.5).expect("set");
            single[m.index()].set_slot(m, slot, Some((&a, &b)), 0.5).expect("set");
        }
        let x = rand(1, &[5, d_in]);
        let tokens = LoraTokens::new(vec![0, 1, NO_SLOT, 2, 0]);
        for lora in [None, Some(&tokens)] {
            let got = fused.forward(&x, lora).expect("fused forward");
            let want = Tensor::cat(&single.iter().map(|p| p.forward(&x, lora).expect("forward")).collect::<Vec<_>>(), 1)
                .expect("cat");
            assert_eq!(got.dims(), [5, 16]);
            assert!(max_diff(&got, &want) <= 1e-6, "lora {}: {}", lora.is_some(), max_diff(&got, &want));
        }
        // The delta really is applied: without the adapters the output differs.
        let base = fused.forward(&x, None).expect("base");
        assert!(max_diff(&fused.forward(&x, Some(&tokens)).expect("lora"), &base) > 1e-3);
        // Clearing k's slot leaves k's columns at the base values for the slot-1 token.
        fused.set_slot(TargetModule::K, 1, None, 0.0).expect("clear");
        let y = fused.forward(&x, Some(&tokens)).expect("forward");
        let row = |t: &Tensor| t.get(1).and_then(|r| r.narrow(0, 8, 4)).expect("row");
        assert_eq!(max_diff(&row(&y), &row(&base)), 0.0);
    }

    #[test]
    fn slot_errors_name_the_problem() {
        let vb = qkv_vb(6, [4, 2, 2]);
        let parts = [(TargetModule::Q, 4, vb.pp("q_proj")), (TargetModule::K, 2, vb.pp("k_proj"))];
        let mut p = Proj::load_fused(6, false, &parts).expect("fused");
        let (a, b) = (rand(1, &[2, 6]), rand(2, &[4, 2]));
        assert!(p.set_slot(TargetModule::Q, 0, Some((&a, &b)), 1.0).is_err(), "LoRA not enabled");
        p.enable_lora(2, 2, DType::F32, &Device::Cpu).expect("lora");
        assert!(p.set_slot(TargetModule::V, 0, Some((&a, &b)), 1.0).is_err(), "v is not a part");
        assert!(p.set_slot(TargetModule::K, 0, Some((&a, &b)), 1.0).is_err(), "k has 2 outputs, B has 4");
        assert!(p.set_slot(TargetModule::Q, 2, Some((&a, &b)), 1.0).is_err(), "slot out of range");
        p.set_slot(TargetModule::Q, 1, Some((&a, &b)), 1.0).expect("fits");
        assert!(Proj::load_fused(6, false, &[]).is_err());
    }
}
