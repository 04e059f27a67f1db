//! Engine flags shared by the commands that start an engine (`run`, `serve`), and the LoRA
//! flags of `serve` ([`LoraArgs`]), named as in vLLM.

use std::path::{Path, PathBuf};

use clap::Args;
use flint_engine::models::gguf::QuantType;
use flint_engine::{models::LoadOptions, EngineConfig, KvCacheBudget, LoraSettings, SamplingDevice};

/// Where the weights come from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFormat {
    Auto,
    Dummy,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Quantize a safetensors model's projections as it loads (in-situ): q8_0, q4_0, q4_1,
    /// q5_0, q5_1, q2_k ... q6_k (K-quants fall back like llama.cpp for rows that are not a
    /// multiple of 256). A GGUF file keeps its own types.
    #[arg(long, env = "FLINT_QUANTIZATION")]
    pub quantization: Option<String>,
    /// Tokens per KV cache block.
    #[arg(long, env = "FLINT_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Most sequences running at once.
    #[arg(long, env = "FLINT_MAX_NUM_SEQS", default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Most tokens (prompt chunks + decodes) in one forward pass (default: 2048 on a GPU,
    /// 512 on the CPU, where a big step would stall every stream for seconds).
    #[arg(long, env = "FLINT_MAX_NUM_BATCHED_TOKENS")]
    pub max_num_batched_tokens: Option<usize>,
    /// Prompt + output limit per request (default: the model's context length).
    #[arg(long, env = "FLINT_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// KV cache size, e.g. `2GiB`, `512MiB`, `1G` or bytes (default on the CPU: 1GiB).
    #[arg(long, env = "FLINT_KV_CACHE_MEMORY", value_parser = parse_size, conflicts_with = "gpu_memory_utilization")]
    pub kv_cache_memory: Option<u64>,
    /// Fraction of the GPU's memory for weights + KV cache (default on a GPU: 0.9).
    #[arg(long, env = "FLINT_GPU_MEMORY_UTILIZATION")]
    pub gpu_memory_utilization: Option<f32>,
    /// `auto` reads the safetensors weights; `dummy` makes random weights on the device from
    /// config.json alone (benchmarks at real sizes, as vLLM's `--load-format dummy`).
    #[arg(long, env = "FLINT_LOAD_FORMAT", value_enum, default_value_t = LoadFormat::Auto)]
    pub load_format: LoadFormat,
    /// Do not reuse the KV blocks of identical prompt prefixes across requests.
    #[arg(long, env = "FLINT_NO_ENABLE_PREFIX_CACHING")]
    pub no_enable_prefix_caching: bool,
    /// Where tokens are picked: `device` samples on the model's device and copies back only
    /// token ids (requests with logprobs still use the host); `host` copies every row of
    /// logits to the host sampler; `auto` is `device` on a GPU, `host` on the CPU.
    #[arg(long, env = "FLINT_SAMPLING_DEVICE", value_enum, default_value_t = SamplingDeviceArg::Auto)]
    pub sampling_device: SamplingDeviceArg,
    /// Wait for the GPU after each forward pass so the step profile in /metrics
    /// (`flint_engine_step_seconds_total`) separates forward and sampling time; slower.
    #[arg(long, env = "FLINT_PROFILE_SYNC")]
    pub profile_sync: bool,
}

/// `--sampling-device`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingDeviceArg {
    Auto,
    Host,
    Device,
}

impl EngineArgs {
    /// The flags' defaults (as if none were given).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: EngineArgs,
        }
        <Only as clap::Parser>::parse_from(["flint"]).args
    }

    /// `--quantization` as a GGML type.
    pub fn quantization(&self) -> anyhow::Result<Option<QuantType>> {
        self.quantization.as_deref().map(|s| s.parse().map_err(|e| anyhow::anyhow!("--quantization: {e}"))).transpose()
    }

    pub fn config(&self, model_dir: &Path, load: LoadOptions) -> EngineConfig {
        let mut cfg = EngineConfig::new(model_dir, load);
        cfg.block_size = self.block_size;
        cfg.max_num_seqs = self.max_num_seqs;
        if let Some(t) = self.max_num_batched_tokens {
            cfg.max_num_batched_tokens = t;
        }
        cfg.max_model_len = self.max_model_len;
        cfg.prefix_caching = !self.no_enable_prefix_caching;
        cfg.dummy_weights = self.load_format == LoadFormat::Dummy;
        cfg.sampling = match self.sampling_device {
            SamplingDeviceArg::Auto => SamplingDevice::Auto,
            SamplingDeviceArg::Host => SamplingDevice::Host,
            SamplingDeviceArg::Device => SamplingDevice::Device,
        };
        cfg.profile_sync = self.profile_sync;
        if let Some(b) = self.kv_cache_memory {
            cfg.kv_cache = KvCacheBudget::Bytes(b);
        } else if let Some(f) = self.gpu_memory_utilization {
            cfg.kv_cache = KvCacheBudget::GpuFraction(f);
        }
        cfg
    }
}

/// LoRA adapters (`flint serve`), as in vLLM. LoRA is on when any of `--enable-lora`, `--lora`
/// or `--lora-dir` is given.
#[derive(Args, Debug, Clone, Default)]
pub struct LoraArgs {
    /// Serve LoRA adapters (implied by --lora and --lora-dir).
    #[arg(long, env = "FLINT_ENABLE_LORA")]
    pub enable_lora: bool,
    /// Serve the PEFT adapter in PATH as model NAME from the start (repeatable, or several
    /// after one flag; comma-separated in the variable). A relative PATH is taken in --lora-dir
    /// when given.
    #[arg(long = "lora", visible_alias = "lora-modules", env = "FLINT_LORA", value_name = "NAME=PATH",
        value_parser = parse_lora_module, num_args = 1.., value_delimiter = ',', action = clap::ArgAction::Append)]
    pub lora: Vec<LoraModule>,
    /// Let clients load adapters at runtime (`POST /v1/load_lora_adapter`), from this
    /// directory only; without it adapters come from --lora alone.
    #[arg(long, env = "FLINT_LORA_DIR", value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Adapters resident at once, and so distinct adapters in one batch.
    #[arg(long, env = "FLINT_MAX_LORAS", default_value_t = LoraSettings::default().max_loras, value_parser = parse_positive)]
    pub max_loras: usize,
    /// Largest adapter rank accepted.
    #[arg(long, env = "FLINT_MAX_LORA_RANK", default_value_t = LoraSettings::default().max_lora_rank, value_parser = parse_positive)]
    pub max_lora_rank: usize,
}

/// One `--lora NAME=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub path: PathBuf,
}

impl LoraArgs {
    /// The engine's LoRA settings; `None` when LoRA is off.
    pub fn settings(&self) -> Option<LoraSettings> {
        let on = self.enable_lora || !self.lora.is_empty() || self.lora_dir.is_some();
        on.then_some(LoraSettings { max_loras: self.max_loras, max_lora_rank: self.max_lora_rank })
    }

    /// The `--lora` adapters with their paths resolved (relative ones in `--lora-dir`).
    pub fn modules(&self) -> Vec<LoraModule> {
        self.lora
            .iter()
            .map(|m| {
                let path = match &self.lora_dir {
                    Some(dir) if m.path.is_relative() => dir.join(&m.path),
                    _ => m.path.clone(),
                };
                LoraModule { name: m.name.clone(), path }
            })
            .collect()
    }
}

/// `NAME=PATH` → a [`LoraModule`].
pub fn parse_lora_module(s: &str) -> Result<LoraModule, String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=PATH"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("the adapter name (before `=`) is empty in `{s}`; expected NAME=PATH"));
    }
    if path.trim().is_empty() {
        return Err(format!("the adapter path (after `=`) is empty in `{s}`; expected NAME=PATH"));
    }
    Ok(LoraModule { name: name.to_owned(), path: PathBuf::from(path) })
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number >= 1")),
    }
}

/// Sizes are parsed where catalog entries and load requests are checked too.
pub use crate::registry::parse_size;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        lora: LoraArgs,
    }

    fn parse(args: &[&str]) -> Result<LoraArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("flint").chain(args.iter().copied())).map(|c| c.lora)
    }

    fn module(name: &str, path: &str) -> LoraModule {
        LoraModule { name: name.into(), path: path.into() }
    }

    #[test]
    fn lora_flags_parse() {
        // Off by default; vLLM's limits.
        let off = parse(&[]).unwrap();
        assert_eq!(off.settings(), None);
        assert_eq!((off.max_loras, off.max_lora_rank), (1, 16));
        let on = parse(&["--enable-lora", "--max-loras", "4", "--max-lora-rank", "64"]).unwrap();
        assert_eq!(on.settings(), Some(LoraSettings { max_loras: 4, max_lora_rank: 64 }));
        assert!(parse(&["--lora-dir", "/srv/adapters"]).unwrap().settings().is_some());

        // --lora NAME=PATH, repeated or several at once, and vLLM's --lora-modules; relative
        // paths are taken in --lora-dir.
        let a = parse(&["--lora", "sql=/a/sql", "--lora-modules", "chat=chat", "x=y=z", "--lora-dir", "/srv"]).unwrap();
        assert_eq!(a.lora, [module("sql", "/a/sql"), module("chat", "chat"), module("x", "y=z")]);
        assert_eq!(a.modules(), [module("sql", "/a/sql"), module("chat", "/srv/chat"), module("x", "/srv/y=z")]);
        assert!(a.settings().is_some());
        let plain = parse(&["--lora", "chat=rel/chat"]).unwrap();
        assert_eq!(plain.modules(), [module("chat", "rel/chat")]);

        for bad in ["nopath", "=/a", " =/a", "name="] {
            let e = parse(&["--lora", bad]).unwrap_err().to_string();
            assert!(e.contains("--lora") && e.contains("NAME=PATH"), "{bad}: {e}");
        }
        assert!(parse(&["--max-loras", "0"]).unwrap_err().to_string().contains("--max-loras"));
        assert!(parse(&["--max-lora-rank", "x"]).is_err());
    }

    #[test]
    fn lora_flags_from_the_environment() {
        // The only test reading these variables.
        std::env::set_var("FLINT_LORA", "a=/x/a,b=b");
        std::env::set_var("FLINT_LORA_DIR", "/srv");
        std::env::set_var("FLINT_MAX_LORAS", "3");
        let got = parse(&[]);
        for v in ["FLINT_LORA", "FLINT_LORA_DIR", "FLINT_MAX_LORAS"] {
            std::env::remove_var(v);
        }
        let got = got.unwrap();
        assert_eq!(got.modules(), [module("a", "/x/a"), module("b", "/srv/b")]);
        assert_eq!(got.settings(), Some(LoraSettings { max_loras: 3, max_lora_rank: 16 }));
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").unwrap_err().contains("lots"));
        assert!(parse_size("3 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("0").is_err());
    }
}
