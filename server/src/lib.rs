//! flint-server: the `flint` binary's library.
//!
//! - [`api`]: the OpenAI-compatible HTTP server (axum): routes, [`api::ApiError`], auth,
//!   limits; `flint serve` starts it.
//! - [`cli`]: the command line (`flint serve`, `flint run`, `flint convert`) and model resolution
//!   (`--model` as a directory or Hugging Face repo id; the default model).
//! - [`bench`]: `flint bench`, a load generator for any OpenAI-compatible server.
//! - [`chat_template`]: Hugging Face chat templates rendered with minijinja
//!   ([`chat_template::ChatTemplate`]).
//!
//! The server never touches tensors: it talks to `flint-engine` only.

pub mod api;
pub mod bench;
pub mod chat_template;
pub mod cli;
