//! [`ForwardBatch`]: one step's flattened ("varlen") input, built from plain per-sequence data.

use candle_core::{Device, Result, Tensor};
use flint_kernels::{LoraTokens, PagedAttentionMeta, SeqSpan, NO_SLOT};

/// Which rows of a sequence produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsRows {
    /// None: a prefill chunk that does not reach the end of the prompt.
    None,
    /// The last new token only: the row that samples the next token.
    Last,
    /// Every new token (prompt logprobs, tests).
    All,
}

/// One sequence's part of a step: its new tokens and where its context lives.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// Tokens to run this step (a prefill chunk, or one decode token); not empty.
    pub new_tokens: &'a [u32],
    /// Tokens of this sequence whose K/V are already in the cache; the new tokens follow them.
    pub num_computed: usize,
    /// KV block ids covering at least `num_computed + new_tokens.len()` tokens.
    pub block_table: &'a [u32],
    pub logits: LogitsRows,
}

/// Device tensors and host metadata for one `Model::forward` over many sequences.
#[derive(Debug)]
pub struct ForwardBatch {
    /// `u32 [num_tokens]`: the new tokens of every sequence, concatenated.
    pub input_ids: Tensor,
    /// `u32 [num_tokens]`: each token's position in its sequence.
    pub positions: Tensor,
    /// `i64 [num_tokens]`: each token's KV cache slot (`block * block_size + offset`).
    pub slot_mapping: Tensor,
    /// Query spans, context lengths and block tables for the attention kernels.
    pub attn: PagedAttentionMeta,
    /// `u32 [num_logits]`: the rows whose logits `forward` returns, in order.
    pub logits_indices: Tensor,
    pub num_tokens: usize,
    pub num_logits: usize,
    /// Each token's LoRA slot; `None` when no sequence of the batch uses an adapter.
    pub lora: Option<LoraTokens>,
}

impl ForwardBatch {
    /// Flattens `seqs` into one batch for a cache of `block_size`-token blocks.
    pub fn new(seqs: &[SeqInput<'_>], block_size: usize, device: &Device) -> Result<Self> {
        if block_size == 0 {
            candle_core::bail!("block_size must be > 0");
        }
        let max_blocks =
            seqs.iter().map(|s| (s.num_computed + s.new_tokens.len()).div_ceil(block_size)).max().unwrap_or(0);
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut logits = Vec::new();
        let mut attn = PagedAttentionMeta::new(block_size, max_blocks);
        for (i, s) in seqs.iter().enumerate() {
            let n = s.new_tokens.len();
            let ctx = s.num_computed + n;
            let blocks = ctx.div_ceil(block_size);
            if n == 0 || s.block_table.len() < blocks {
                candle_core::bail!(
                    "sequence {i}: {n} new tokens after {} computed need {blocks} blocks, table has {}",
                    s.num_computed,
                    s.block_table.len()
                );
            }
            let start = ids.len();
            ids.extend_from_slice(s.new_tokens);
            for p in s.num_computed..ctx {
                positions.push(p as u32);
                slots.push(s.block_table[p / block_size] as i64 * block_size as i64 + (p % block_size) as i64);
            }
            match s.logits {
                LogitsRows::None => {}
                LogitsRows::Last => logits.push((start + n - 1) as u32),
                LogitsRows::All => logits.extend((start..start + n).map(|r| r as u32)),
            }
            let span = SeqSpan { query_start: start as u32, query_len: n as u32, context_len: ctx as u32 };
            attn.push(span, &s.block_table[..blocks]);
        }
        let num_tokens = ids.len();
        let num_logits = logits.len();
        Ok(Self {
            input_ids: Tensor::from_vec(ids, num_tokens, device)?,
            positions: Tensor::from_vec(positions, num_tokens, device)?,
            slot_mapping: Tensor::from_vec(slots, num_tokens, device)?,
            attn,
            logits_indices: Tensor::from_vec(logits, num_logits, device)?,
            num_tokens,
            num_logits,
            lora: None,
        })
    }

    /// Gives sequence `i` (in the order passed to [`Self::new`]) LoRA slot `seq_slots[i]`
    /// (`None`: the base model). Leaves `lora` empty when no sequence uses an adapter.
    pub fn set_lora_slots(&mut self, seq_slots: &[Option<u32>]) -> Result<()> {
        if seq_slots.len() != self.attn.seqs.len() {
            candle_core::bail!("{} LoRA slots for {} sequences", seq_slots.len(), self.attn.seqs.len());
        }
        if seq_slots.iter().all(Option::is_none) {
            self.lora = None;
            return Ok(());
        }
        let tokens = self
            .attn
            .seqs
            .iter()
            .zip(seq_slots)
            .flat_map(|(s, slot)| std::iter::repeat_n(slot.unwrap_or(NO_SLOT), s.query_len as usize))
            .collect();
        self.lora = Some(LoraTokens::new(tokens));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_prefill_and_decode() {
        let (a, b) = ([5u32, 6, 7], [9u32]);
        let seqs = [
            SeqInput { new_tokens: &a, num_computed: 2, block_table: &[4, 1], logits: LogitsRows::Last },
            SeqInput { new_tokens: &b, num_computed: 0, block_table: &[3], logits: LogitsRows::All },
        ];
        let fb = ForwardBatch::new(&seqs, 4, &Device::Cpu).unwrap();
        assert_eq!(fb.positions.to_vec1::<u32>().unwrap(), [2, 3, 4, 0]);
        assert_eq!(fb.slot_mapping.to_vec1::<i64>().unwrap(), [18, 19, 4, 12]);
        assert_eq!(fb.logits_indices.to_vec1::<u32>().unwrap(), [2, 3]);
        assert_eq!(fb.attn.block_tables, [4, 1, 3, 0]);
        assert_eq!(fb.attn.seqs[1], SeqSpan { query_start: 3, query_len: 1, context_len: 1 });
    }

    #[test]
    fn short_block_table_is_an_error() {
        let t = [1u32; 5];
        let seqs = [SeqInput { new_tokens: &t, num_computed: 0, block_table: &[0], logits: LogitsRows::Last }];
        assert!(ForwardBatch::new(&seqs, 4, &Device::Cpu).is_err());
    }
}
