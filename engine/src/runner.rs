//! [`ModelRunner`]: turns a [`SchedulerOutput`] into one varlen [`ForwardBatch`], runs one
//! `Model::forward` over it, and hands back the logits of the rows that sample.

use std::collections::HashMap;

use flint_models::{Device, ForwardBatch, KvCache, LogitsRows, Model, ModelConfig, SeqInput};

use crate::{error::Result, ids::AdapterId, scheduler::SchedulerOutput};

/// The model, its KV cache and the device they live on.
pub struct ModelRunner {
    model: Box<dyn Model>,
    kv: KvCache,
    device: Device,
}

/// Logits of one step: `rows[i]` belongs to the i-th scheduled sequence that samples.
pub struct StepLogits {
    data: Vec<f32>,
    vocab: usize,
}

impl StepLogits {
    pub fn num_rows(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    /// Row `i` as a mutable slice (the sampler uses it as scratch space).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

impl ModelRunner {
    pub fn new(model: Box<dyn Model>, kv: KvCache, device: Device) -> Self {
        Self { model, kv, device }
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    pub fn block_size(&self) -> usize {
        self.kv.block_size()
    }

    pub fn num_blocks(&self) -> usize {
        self.kv.num_blocks()
    }

    /// Runs every scheduled sequence's new tokens in one forward pass; sequences with an
    /// adapter use its LoRA slot from `lora_slots`.
    pub fn execute(&mut self, out: &SchedulerOutput, lora_slots: &HashMap<AdapterId, u32>) -> Result<StepLogits> {
        let vocab = self.model.config().vocab_size;
        if out.seqs.is_empty() {
            return Ok(StepLogits { data: Vec::new(), vocab });
        }
        let inputs: Vec<SeqInput<'_>> = out
            .seqs
            .iter()
            .map(|s| SeqInput {
                new_tokens: &s.new_tokens,
                num_computed: s.num_computed,
                block_table: &s.block_table,
                logits: if s.samples { LogitsRows::Last } else { LogitsRows::None },
            })
            .collect();
        let mut batch = ForwardBatch::new(&inputs, self.kv.block_size(), &self.device)?;
        if !lora_slots.is_empty() {
            let slots: Vec<Option<u32>> =
                out.seqs.iter().map(|s| s.adapter.and_then(|a| lora_slots.get(&a).copied())).collect();
            batch.set_lora_slots(&slots)?;
        }
        let logits = self.model.forward(&batch, &self.kv)?;
        let data = if batch.num_logits == 0 { Vec::new() } else { logits.flatten_all()?.to_vec1::<f32>()? };
        Ok(StepLogits { data, vocab })
    }
}
