//! `flint bench [--base-url URL] [--concurrency 1,4,16,64] ...`: load-tests an
//! OpenAI-compatible server and prints TTFT, ITL, E2E latency and throughput per concurrency
//! level. The logic lives in [`crate::bench`]; this is flags, runtime and output.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;

use crate::bench::{self, profile::StepCounters, BenchConfig, Client, Endpoint, LevelReport};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The API root of the server under test.
    #[arg(long, env = "FLINT_BENCH_BASE_URL", default_value = "http://127.0.0.1:8000/v1")]
    pub base_url: String,
    /// Model name to request, or a comma-separated list the requests take in turn (e.g. LoRA
    /// adapters spread over the batch); default: the first one `GET {base-url}/models` lists.
    #[arg(long, env = "FLINT_BENCH_MODEL")]
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY` (also read from OPENAI_API_KEY).
    #[arg(long, env = "FLINT_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// `completions` (raw prompt) or `chat` (one user message to /chat/completions).
    #[arg(long, env = "FLINT_BENCH_ENDPOINT", value_enum, default_value_t = Endpoint::Completions)]
    pub endpoint: Endpoint,
    /// Prompt length in tokens (exact with --tokenizer, about one word per token without).
    #[arg(long, env = "FLINT_BENCH_INPUT_LEN", default_value_t = 128)]
    pub input_len: usize,
    /// Tokens to generate per request (`max_tokens`).
    #[arg(long, env = "FLINT_BENCH_OUTPUT_LEN", default_value_t = 64)]
    pub output_len: usize,
    /// Leave `"ignore_eos": true` out of requests (for servers that reject unknown fields);
    /// requests may then stop early at EOS.
    #[arg(long, env = "FLINT_BENCH_NO_IGNORE_EOS")]
    pub no_ignore_eos: bool,
    /// Concurrency levels to sweep, comma-separated.
    #[arg(long, env = "FLINT_BENCH_CONCURRENCY", value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Requests per level; default max(8, 4 × concurrency).
    #[arg(long, env = "FLINT_BENCH_REQUESTS")]
    pub requests: Option<usize>,
    /// Seed for the random prompts.
    #[arg(long, env = "FLINT_BENCH_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Directory with the model's tokenizer.json: prompts are then random token ids of
    /// exactly --input-len tokens rather than random common words.
    #[arg(long, env = "FLINT_BENCH_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Send each prompt as exactly --input-len random token ids below this vocabulary size
    /// (completions endpoint only): exact prompt lengths without a tokenizer, e.g. for
    /// dummy-weight models (`flint serve --load-format dummy`).
    #[arg(long, env = "FLINT_BENCH_RANDOM_IDS", value_name = "VOCAB_SIZE", conflicts_with = "tokenizer")]
    pub random_ids: Option<u32>,
    /// Write the config and every level's results (with per-request samples) to this file.
    #[arg(long, env = "FLINT_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// Per-request timeout in seconds, connection to last token.
    #[arg(long, env = "FLINT_BENCH_TIMEOUT_SECS", default_value_t = 600)]
    pub timeout_secs: u64,
}

impl BenchArgs {
    fn requests_for(&self, concurrency: usize) -> usize {
        self.requests.unwrap_or_else(|| (4 * concurrency).max(8))
    }
}

pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.concurrency.is_empty(), "--concurrency needs at least one level");
    anyhow::ensure!(args.concurrency.iter().all(|&c| c > 0), "--concurrency levels must be at least 1");
    anyhow::ensure!(args.requests != Some(0), "--requests must be at least 1");
    anyhow::ensure!(args.input_len > 0 && args.output_len > 0, "--input-len and --output-len must be at least 1");
    let url = reqwest::Url::parse(&args.base_url).with_context(|| format!("invalid --base-url {:?}", args.base_url))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "invalid --base-url {:?}: not an http(s) URL",
        args.base_url
    );
    // --api-key's own env var wins; OPENAI_API_KEY is what other OpenAI clients read.
    let api_key = args.api_key.clone().or_else(|| std::env::var("OPENAI_API_KEY").ok()).filter(|k| !k.is_empty());
    let tokenizer =
        args.tokenizer.as_deref().map(flint_engine::Tokenizer::from_dir).transpose().context("loading --tokenizer")?;
    let total: usize = args.concurrency.iter().map(|&c| args.requests_for(c)).sum();
    let prompts = match args.random_ids {
        Some(vocab) => {
            anyhow::ensure!(vocab > 0, "--random-ids must be at least 1");
            anyhow::ensure!(args.endpoint == Endpoint::Completions, "--random-ids needs --endpoint completions");
            bench::random_id_prompts(total, args.input_len, vocab, args.seed)
        }
        None => bench::random_prompts(total, args.input_len, args.seed, tokenizer.as_ref())?,
    };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(async {
        let client =
            Client::builder().connect_timeout(Duration::from_secs(10)).build().context("building the HTTP client")?;
        let model = match &args.model {
            Some(m) => m.clone(),
            None => bench::discover_model(&client, &args.base_url, api_key.as_deref()).await?,
        };
        let cfg = BenchConfig {
            base_url: args.base_url.clone(),
            model,
            api_key,
            endpoint: args.endpoint,
            output_len: args.output_len,
            ignore_eos: !args.no_ignore_eos,
            timeout: Duration::from_secs(args.timeout_secs),
        };
        println!(
            "flint bench: {} at {}, {} prompt tokens{}, {} output tokens; latencies in ms",
            cfg.model,
            client_url(&cfg),
            args.input_len,
            if tokenizer.is_some() || args.random_ids.is_some() { "" } else { " (approx., words)" },
            cfg.output_len,
        );
        println!("{}", bench::render_header());
        let mut levels: Vec<LevelReport> = Vec::new();
        let mut offset = 0;
        let mut result = Ok(());
        for &c in &args.concurrency {
            let n = args.requests_for(c);
            let before = StepCounters::scrape(&client, &cfg.base_url, cfg.api_key.as_deref()).await;
            // Fresh prompts per level, so no level hits what an earlier one left in the cache.
            let mut report = bench::run_level(&cfg, &client, c, n, &prompts[offset..offset + n]).await?;
            offset += n;
            let after = StepCounters::scrape(&client, &cfg.base_url, cfg.api_key.as_deref()).await;
            report.step_profile = before.zip(after).and_then(|(b, a)| a.since(&b));
            println!("{}", bench::render_row(&report));
            if let Some(p) = &report.step_profile {
                println!("{}", p.render());
            }
            std::io::stdout().flush().ok();
            let all_failed = report.ok == 0;
            let first_error = report.errors.first().map(|e| e.message.clone());
            levels.push(report);
            if all_failed {
                // Every later level would fail the same way; say why in one line instead.
                result = Err(anyhow::anyhow!(
                    "all {n} requests failed at concurrency {c}: {}",
                    first_error.unwrap_or_default()
                ));
                break;
            }
        }
        if let Some(path) = &args.json {
            write_json(path, &args, &cfg, &levels)?;
        }
        result
    })
}

fn client_url(cfg: &BenchConfig) -> String {
    bench::client::join_url(&cfg.base_url, cfg.endpoint.path())
}

fn write_json(
    path: &std::path::Path,
    args: &BenchArgs,
    cfg: &BenchConfig,
    levels: &[LevelReport],
) -> anyhow::Result<()> {
    let mut config = serde_json::to_value(cfg)?;
    config["input_len"] = serde_json::json!(args.input_len);
    config["concurrency"] = serde_json::json!(args.concurrency);
    config["requests"] = serde_json::json!(args.concurrency.iter().map(|&c| args.requests_for(c)).collect::<Vec<_>>());
    config["seed"] = serde_json::json!(args.seed);
    config["tokenizer"] = serde_json::json!(args.tokenizer.as_ref().map(|p| p.display().to_string()));
    config["random_ids"] = serde_json::json!(args.random_ids);
    let doc = serde_json::json!({ "config": config, "levels": levels });
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
