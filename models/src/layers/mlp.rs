//! The gated SiLU MLP (`gate_proj`, `up_proj`, `down_proj`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use flint_kernels::LoraTokens;

use crate::{config::ModelConfig, layers::linear::Proj, lora::TargetModule};

#[derive(Debug)]
pub struct Mlp {
    pub(crate) gate_proj: Proj,
    pub(crate) up_proj: Proj,
    pub(crate) down_proj: Proj,
}

impl Mlp {
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Proj::load(h, i, false, TargetModule::Gate, vb.pp("gate_proj"))?,
            up_proj: Proj::load(h, i, false, TargetModule::Up, vb.pp("up_proj"))?,
            down_proj: Proj::load(i, h, false, TargetModule::Down, vb.pp("down_proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, lora: Option<&LoraTokens>) -> Result<Tensor> {
        let act = flint_kernels::silu_and_mul(&self.gate_proj.forward(x, lora)?, &self.up_proj.forward(x, lora)?)?;
        self.down_proj.forward(&act, lora)
    }

    pub(crate) fn projs_mut(&mut self) -> [&mut Proj; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }

    pub(crate) fn projs(&self) -> [&Proj; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }
}
