//! Engine flags shared by the commands that start an engine (`run`, later `serve`), named as in
//! vLLM.

use std::path::Path;

use clap::Args;
use flint_engine::{models::LoadOptions, EngineConfig, KvCacheBudget};

/// Where the weights come from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFormat {
    Auto,
    Dummy,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
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
}

impl EngineArgs {
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
        if let Some(b) = self.kv_cache_memory {
            cfg.kv_cache = KvCacheBudget::Bytes(b);
        } else if let Some(f) = self.gpu_memory_utilization {
            cfg.kv_cache = KvCacheBudget::GpuFraction(f);
        }
        cfg
    }
}

/// `2GiB`, `512MiB`, `1.5G`, `100k`, `4096` → bytes (binary units, as vLLM's `--kv-cache-memory`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a size like 2GiB or 512MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB or TiB)")),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

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
