//! flint-server: the `flint` binary's library.
//!
//! - [`cli`]: the command line (`flint run`, `flint convert`) and model resolution
//!   (`--model` as a directory or Hugging Face repo id; the default model).
//! - [`chat_template`]: Hugging Face chat templates rendered with minijinja
//!   ([`chat_template::ChatTemplate`]).
//!
//! The server never touches tensors: it talks to `flint-engine` only.

pub mod chat_template;
pub mod cli;
