//! [`ModelRunner`]: turns a [`SchedulerOutput`] into one varlen [`ForwardBatch`], runs one
//! `Model::forward` over it, and hands back the logits of the rows that sample ([`StepLogits`],
//! left on the device until a sampler asks for them).

use std::collections::HashMap;

use flint_kernels::{LogitAdjust, RowSampling};
use flint_models::{DType, Device, ForwardBatch, KvCache, LogitsRows, Model, ModelConfig, SeqInput, Tensor};

use crate::{error::Result, ids::AdapterId, scheduler::SchedulerOutput};

/// The model, its KV cache and the device they live on.
pub struct ModelRunner {
    model: Box<dyn Model>,
    kv: KvCache,
    device: Device,
}

/// Logits of one step, where the model left them: row `i` belongs to the i-th scheduled
/// sequence that samples. Rows are copied to the host only when asked for ([`Self::to_host`]);
/// [`Self::sample_on_device`] picks tokens where they are and copies back only the ids.
pub struct StepLogits {
    /// `[rows, vocab]`; `None` when no sequence samples this step.
    logits: Option<Tensor>,
    rows: usize,
    vocab: usize,
}

/// Rows of a step's logits on the host.
pub struct HostLogits {
    data: Vec<f32>,
    vocab: usize,
}

impl HostLogits {
    /// Row `i` as a mutable slice (the sampler uses it as scratch space).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

impl StepLogits {
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// The logits of `rows` (in that order), or all of them without a gather when `rows` is
    /// every row in order.
    fn select(&self, rows: &[usize]) -> Result<Option<Tensor>> {
        let Some(t) = &self.logits else { return Ok(None) };
        if rows.is_empty() {
            return Ok(None);
        }
        if rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(Some(t.clone()));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::new(idx.as_slice(), t.device())?;
        Ok(Some(t.index_select(&idx, 0)?))
    }

    /// Copies `rows` (in that order) to the host as f32.
    pub fn to_host(&self, rows: &[usize]) -> Result<HostLogits> {
        let data = match self.select(rows)? {
            Some(t) => t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            None => Vec::new(),
        };
        Ok(HostLogits { data, vocab: self.vocab })
    }

    /// Picks one token for each of `rows` on the logits' device; `params[i]` is for `rows[i]`,
    /// and each adjustment's `row` indexes `rows`.
    pub fn sample_on_device(&self, rows: &[usize], params: &[RowSampling], adjust: &[LogitAdjust]) -> Result<Vec<u32>> {
        match self.select(rows)? {
            Some(t) => Ok(flint_kernels::sample_rows(&t, params, adjust)?),
            None => Ok(Vec::new()),
        }
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

    /// Whether the model runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        !self.device.is_cpu()
    }

    /// Waits until the device has finished the work queued so far (step profiling only: it
    /// costs the overlap of host and device work).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
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
            return Ok(StepLogits { logits: None, rows: 0, vocab });
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
        let rows = batch.num_logits;
        Ok(StepLogits { logits: (rows > 0).then_some(logits), rows, vocab })
    }
}
