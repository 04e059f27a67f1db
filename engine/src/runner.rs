//! [`ModelRunner`]: turns a [`SchedulerOutput`] into one varlen [`ForwardBatch`], runs one
//! `Model::forward` over it, and hands back the logits of the rows that sample.

use flint_models::{Device, ForwardBatch, KvCache, LogitsRows, Model, ModelConfig, SeqInput};

use crate::{error::Result, scheduler::SchedulerOutput};

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

    pub fn block_size(&self) -> usize {
        self.kv.block_size()
    }

    pub fn num_blocks(&self) -> usize {
        self.kv.num_blocks()
    }

    /// Runs every scheduled sequence's new tokens in one forward pass.
    pub fn execute(&mut self, out: &SchedulerOutput) -> Result<StepLogits> {
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
        let batch = ForwardBatch::new(&inputs, self.kv.block_size(), &self.device)?;
        let logits = self.model.forward(&batch, &self.kv)?;
        let data = if batch.num_logits == 0 { Vec::new() } else { logits.flatten_all()?.to_vec1::<f32>()? };
        Ok(StepLogits { data, vocab })
    }
}
