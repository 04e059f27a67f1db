//! Fine-tuning through OpenAI's files and fine-tuning API: LoRA adapters trained on the base
//! model being served, and served under `ft:<base>:<suffix>:<job>` the moment training ends.
//!
//! - [`FineTuning`]: the service: creates jobs (checking the request and the files), keeps a
//!   queue per base model (one job at a time each, at most [`MAX_PENDING_JOBS`] pending),
//!   cancels, lists jobs / events / checkpoints, and after a restart marks interrupted jobs
//!   failed and serves the adapters of finished ones again.
//! - [`store::Store`]: SQLite (files, jobs, events, checkpoints) under `--data-dir`;
//!   [`upload`]: uploads streamed to disk and checked as they arrive; [`dataset`]: the JSONL
//!   training format, checked line by line ([`dataset::MAX_LINE_BYTES`],
//!   [`dataset::MAX_LINES`]); [`prepare`]: conversations → token ids with loss weights
//!   through the chat template; [`job`]: the job object and its hyper-parameters;
//!   [`runner`]: one job's run on the engine's device.
//! - [`FineTuneError`]: every error of this layer; `api::error` maps it to HTTP.

pub mod dataset;
mod error;
pub mod job;
pub mod prepare;
mod runner;
mod service;
pub mod store;
pub mod upload;

pub use error::FineTuneError;
pub use service::{FineTuning, MAX_CONCURRENT_VALIDATIONS, MAX_PENDING_JOBS};
