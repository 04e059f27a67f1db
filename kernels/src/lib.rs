//! flint-kernels: the compute kernels flint needs beyond candle's dense math.
//!
//! Every kernel is a candle custom op behind a documented safe function, with a CPU
//! implementation that is both the CPU path and the reference the CUDA kernels are
//! checked against. The CUDA versions (`kernels/cuda/*.cu`, compiled to PTX by build.rs)
//! exist only with the `cuda` feature.
//!
//! Principal items:
//! - [`PagedAttentionMeta`]: host-side description of one varlen batch over the paged KV cache
//!   (query spans, context lengths, block tables).
//! - [`reshape_and_cache`]: writes new K/V rows into the paged cache at their slots.
//! - [`paged_attention`]: causal attention of varlen queries (prefill chunks and decode tokens
//!   mixed) against their context in the paged cache, with grouped-query heads;
//!   [`paged_attention_split_k`] is the split-K (flash-decoding) form for long contexts.
//! - [`add_rms_norm`], [`rotary_inplace`], [`silu_and_mul`] / [`silu_and_mul_packed`]: the
//!   decoder layer's fused elementwise steps.
//! - [`lora_delta`] with [`LoraTokens`] / [`SlotParams`]: the batched multi-adapter LoRA
//!   matmul (each token its own adapter slot).
//! - [`qmatmul`] with [`PackedQ`] / [`QKind`]: CPU matmul against GGML-quantized weights
//!   (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with 8-bit activations and integer dot products.
//! - [`sample_rows`] with [`RowSampling`] / [`LogitAdjust`]: a batch of logits rows to token
//!   ids on the device (temperature, top-k/p, min-p, sparse logit adjustments).

mod device_cache;
mod elem;
pub mod fused;
pub mod lora;
pub mod paged;
pub mod quant;
pub mod sampling;
#[doc(hidden)]
pub mod testing;

pub use fused::{add_rms_norm, rotary_inplace, silu_and_mul, silu_and_mul_packed};
pub use lora::{lora_delta, LoraTokens, SlotParams, NO_SLOT};
pub use quant::{qmatmul, PackedQ, QKind};

/// Runs `f` on a thread of the compute pool (rayon's, one thread per core) and waits for it.
///
/// A model step calls this once: every kernel inside then splits its work from a pool thread,
/// which takes a share itself, instead of a foreign thread handing each of the step's ~120
/// matmuls over and sleeping until they finish (on two cores the wake-ups were a quarter of a
/// decode step).
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
pub use sampling::{sample_rows, LogitAdjust, RowSampling};
pub use paged::{
    paged_attention, paged_attention_split_k, reshape_and_cache, PagedAttentionMeta, SeqSpan,
    MAX_HEAD_DIM,
};

#[cfg(feature = "cuda")]
pub mod cuda;
