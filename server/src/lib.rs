//! flint-server: the `flint` binary's library.
//!
//! - [`api`]: the OpenAI-compatible HTTP server (axum): routes, [`api::ApiError`], auth,
//!   limits; `flint serve` starts it.
//! - [`cli`]: the command line (`flint serve`, `flint run`, `flint convert`) and model resolution
//!   (`--model` as a directory or Hugging Face repo id; the default model).
//! - [`bench`]: `flint bench`, a load generator for any OpenAI-compatible server.
//! - [`chat_template`]: Hugging Face chat templates rendered with minijinja
//!   ([`chat_template::ChatTemplate`]).
//! - [`generation`]: what every protocol shares between parsing a request and shaping its
//!   answer: admission per sequence, prompt building on blocking threads, sampling mapping,
//!   submit / stream / collect ([`generation::GenError`] for its errors).
//! - [`registry`]: runtime model management ([`registry::ModelRegistry`]: several models,
//!   loading / ready / failed / unloading, switch, idle unload; the TOML catalog).
//! - [`finetune`]: OpenAI-style fine-tuning (files, jobs, LoRA training on the served model),
//!   persisted in SQLite under `--data-dir`.
//! - [`logs`]: `tracing` setup (`FLINT_LOG` filter, text or JSON on stderr) and the ring of
//!   recent lines that `GET /admin/logs` reads.
//!
//! The server never touches tensors: it talks to `flint-engine` only.

pub mod api;
pub mod bench;
pub mod chat_template;
pub mod cli;
pub mod finetune;
pub mod generation;
pub mod registry;
pub mod logs;
