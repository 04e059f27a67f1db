//! `flint run [--model M] [--chat] [--max-tokens N] [--temperature T] [--seed S] "prompt"`:
//! one-shot generation streamed to stdout, like `ollama run`.

use std::{io::Write, time::Instant};

use anyhow::Context;
use clap::Args;
use flint_engine::{
    models::{parse_dtype, LoadOptions},
    EngineHandle, SamplingParams,
};

use super::engine_args::EngineArgs;
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
    /// Stop when this text is generated (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print timing statistics to stderr at the end.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let dir = super::resolve_model(args.model.as_deref())?;
    let params = SamplingParams::new(args.max_tokens)?
        .with_temperature(args.temperature)?
        .with_top_p(args.top_p)?
        .with_top_k(args.top_k)?
        .with_stop(args.stop.clone())?
        .with_seed(args.seed);
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    let load = LoadOptions { device: device()?, dtype, quantization: args.engine.quantization()? };
    let mut cfg = args.engine.config(&dir, load);
    // One prompt: a cache for one sequence at full length is all `run` can use.
    cfg.max_num_seqs = 1;
    let engine = EngineHandle::start(cfg)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let tok = engine.tokenizer();
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let start = Instant::now();
        let mut stream = engine.generate(prompt_ids, params)?;
        let mut first_token = None;
        let mut finish = None;
        let mut stdout = std::io::stdout().lock();
        while let Some(delta) = stream.next().await {
            let delta = delta?;
            if !delta.token_ids.is_empty() {
                first_token.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
            // A closed pipe (e.g. `| head`) ends the output, not the process with a panic.
            let _ = stdout.write_all(delta.text.as_bytes()).and_then(|_| stdout.flush());
            finish = delta.finish.or(finish);
        }
        let _ = writeln!(stdout);
        if args.verbose {
            let usage = stream.usage();
            let total = start.elapsed().as_secs_f64();
            let ttft = first_token.unwrap_or(total);
            let n = usage.completion_tokens;
            eprintln!(
                "prompt: {} tokens, first token after {ttft:.3}s; output: {n} tokens in {:.3}s ({:.1} tok/s after the first); finish: {}",
                usage.prompt_tokens,
                total,
                n.saturating_sub(1) as f64 / (total - ttft).max(1e-9),
                finish.map_or("none", |f| f.reason.as_str()),
            );
        }
        anyhow::Ok(())
    })
}

/// The GPU when built with `cuda` and one is present, else the CPU.
pub(crate) fn device() -> anyhow::Result<flint_engine::models::Device> {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = flint_engine::models::Device::new_cuda(0) {
            return Ok(d);
        }
        tracing::warn!("no CUDA device found: running on the CPU");
    }
    Ok(flint_engine::models::Device::Cpu)
}
