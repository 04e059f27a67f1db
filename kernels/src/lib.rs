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
//!   mixed) against their context in the paged cache, with grouped-query heads.

mod elem;
pub mod paged;

pub use paged::{paged_attention, reshape_and_cache, PagedAttentionMeta, SeqSpan};

#[cfg(feature = "cuda")]
pub mod cuda;
