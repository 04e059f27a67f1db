//! The gated SiLU MLP (`gate_proj`, `up_proj`, `down_proj`), with gate and up fused into one
//! matmul whose `[gate | up]` output feeds the packed SiLU-and-mul.

use candle_core::{Result, Tensor};
use flint_kernels::LoraTokens;

use crate::{
    config::ModelConfig,
    layers::{linear::Proj, weights::Vb},
    lora::TargetModule,
};

#[derive(Debug)]
pub struct Mlp {
    /// `gate_proj | up_proj` (checkpoint names kept for loading and LoRA).
    pub(crate) gate_up_proj: Proj,
    pub(crate) down_proj: Proj,
}

impl Mlp {
    pub fn load(vb: Vb, cfg: &ModelConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up_proj: Proj::load_fused(
                h,
                false,
                &[(TargetModule::Gate, i, vb.pp("gate_proj")), (TargetModule::Up, i, vb.pp("up_proj"))],
            )?,
            down_proj: Proj::load(i, h, false, TargetModule::Down, vb.pp("down_proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, lora: Option<&LoraTokens>) -> Result<Tensor> {
        let act = flint_kernels::silu_and_mul_packed(&self.gate_up_proj.forward(x, lora)?)?;
        self.down_proj.forward(&act, lora)
    }

    pub(crate) fn projs_mut(&mut self) -> [&mut Proj; 2] {
        [&mut self.gate_up_proj, &mut self.down_proj]
    }

    pub(crate) fn projs(&self) -> [&Proj; 2] {
        [&self.gate_up_proj, &self.down_proj]
    }
}
