//! flint-engine: from prompts to tokens.
//!
//! - [`EngineHandle`]: the clonable async handle of the engine thread ([`core::EngineCore`]),
//!   which owns the scheduler, KV cache and model; `generate` returns an [`OutputStream`] of
//!   text deltas (detokenized, stop strings applied, logprobs). [`EngineConfig`] sizes it.
//! - [`scheduler::Scheduler`]: token-budget continuous batching with chunked prefill and
//!   preemption; [`kv::KvManager`] / [`kv::BlockPool`]: paged KV blocks and prefix caching.
//!   Neither touches tensors.
//! - [`runner::ModelRunner`]: one varlen `Model::forward` per step.
//! - [`Generator`]: a model + tokenizer + KV cache running one sequence through the paged,
//!   varlen model path (chunked prefill, then decode). `flint run` and the benches use it.
//! - [`SamplingParams`] / [`Sampler`]: checked sampling parameters and the token picker.
//! - [`Tokenizer`]: tokenizer.json plus tokenizer_config.json settings (BOS, chat template).
//! - [`Detokenizer`]: incremental, UTF-8-correct text deltas from token ids.
//! - [`lora`]: LoRA adapters by name ([`AdapterInfo`]), loaded at runtime, leased by requests
//!   and kept in the model's bounded slots ([`LoraSettings`]).
//! - [`finetune`]: LoRA supervised fine-tuning of the served base model ([`finetune::train`]
//!   over token-level [`finetune::TrainExample`]s; the result saves as a PEFT adapter).
//! - Supervision: a panic or failed step on the engine thread is fatal to it and reported by
//!   [`EngineHandle::failure`]; [`EngineHandle::stop`] ends it at once. The channel messages
//!   between the handle, the thread and the streams are all in `messages`.
//! - [`EngineError`]: this layer's one error type.

pub mod core;
pub mod detokenizer;
#[cfg(test)]
mod engine_tests;
pub mod error;
pub mod finetune;
pub mod generate;
pub mod handle;
pub mod ids;
pub mod kv;
pub mod lora;
pub mod memory;
mod messages;
pub mod output;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod stop;
mod supervise;
pub mod tokenizer;

pub use detokenizer::Detokenizer;
pub use error::EngineError;
pub use flint_models as models;
pub use core::EngineStats;
pub use generate::{Completion, Generator, GeneratorOptions};
pub use handle::{EngineConfig, EngineHandle, EngineInfo, KvCacheBudget, SubmitOptions, MAX_CACHE_SALT_BYTES};
pub use ids::{AdapterId, RequestId};
pub use lora::{AdapterInfo, LoraSettings};
#[doc(hidden)]
pub use messages::FaultKind;
pub use output::{OutputStream, SampleOutput, StreamDelta, TokenLogprob, Usage};
pub use scheduler::{Finish, FinishReason, StopReason};
pub use sampling::{Sampler, SamplingDevice, SamplingParams};
pub use tokenizer::Tokenizer;
