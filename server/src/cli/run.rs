//! `flint run [--model M] [--chat] [--max-tokens N] [--temperature T] [--seed S] "prompt"`:
//! one-shot generation streamed to stdout, like `ollama run`.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use flint_engine::{
    models::{parse_dtype, LoadOptions},
    Generator, GeneratorOptions, SamplingParams,
};

use crate::chat_template::{ChatMessage, ChatTemplate};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The prompt.
    pub prompt: String,
    /// Model directory or Hugging Face repo id (`org/name[@revision]`); default: SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<String>,
    /// Render the prompt as a user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Random seed (sampling repeats exactly with the same seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Weights/compute dtype: f32, bf16 or f16 (default f32 on the CPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Print timing statistics to stderr at the end.
    #[arg(long)]
    pub verbose: bool,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let dir = super::resolve_model(args.model.as_deref())?;
    let params = SamplingParams::new(args.max_tokens)?
        .with_temperature(args.temperature)?
        .with_top_p(args.top_p)?
        .with_top_k(args.top_k)?
        .with_seed(args.seed);
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    let load = LoadOptions { device: device()?, dtype };
    let mut generator = Generator::load(&dir, &load, GeneratorOptions::default())
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let tok = generator.tokenizer();
    let prompt_ids = if args.chat {
        let template = ChatTemplate::from_tokenizer_config(&tok.template_config())?
            .with_context(|| format!("{} has no chat_template", dir.join("tokenizer_config.json").display()))?;
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(ChatMessage { role: "system".into(), content: system });
        }
        messages.push(ChatMessage { role: "user".into(), content: args.prompt });
        let rendered = template.render(&messages, true)?;
        tok.encode_raw(&rendered)?
    } else {
        tok.encode_prompt(&args.prompt)?
    };
    let mut stdout = std::io::stdout().lock();
    let done = generator.generate_text(&prompt_ids, &params, |delta| {
        // A closed pipe (e.g. `| head`) ends the output, not the process with a panic.
        let _ = stdout.write_all(delta.as_bytes()).and_then(|_| stdout.flush());
    })?;
    let _ = writeln!(stdout);
    if args.verbose {
        let n = done.token_ids.len();
        eprintln!(
            "prompt: {} tokens in {:.3}s ({:.1} tok/s); output: {n} tokens in {:.3}s ({:.1} tok/s); finish: {:?}",
            done.prompt_tokens,
            done.prefill_secs,
            done.prompt_tokens as f64 / done.prefill_secs.max(1e-9),
            done.decode_secs,
            n.saturating_sub(1) as f64 / done.decode_secs.max(1e-9),
            done.finish_reason
        );
    }
    Ok(())
}

/// The GPU when built with `cuda` and one is present, else the CPU.
fn device() -> anyhow::Result<flint_engine::models::Device> {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = flint_engine::models::Device::new_cuda(0) {
            return Ok(d);
        }
        tracing::warn!("no CUDA device found: running on the CPU");
    }
    Ok(flint_engine::models::Device::Cpu)
}
