//! The model catalog (`flint serve --catalog models.toml`): friendly names for directories,
//! GGUF files and Hugging Face ids, with per-model options.
//!
//! ```toml
//! [models.smollm2]
//! path = "/models/SmolLM2-135M-Instruct"   # or gguf = "x.Q8_0.gguf", or hub = "org/name"
//! dtype = "bf16"
//! max_model_len = 4096
//! kv_cache_memory = "2GiB"                 # or gpu_memory_utilization = 0.5
//! keep_alive = "10m"                       # unloaded after 10 idle minutes ("-1": never)
//! load = true                              # load at startup
//! ```
//!
//! Relative paths are taken from the catalog file's directory. Every problem is reported with
//! the file, the entry and the field.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use flint_engine::{models::parse_dtype, KvCacheBudget};
use serde::Deserialize;

use super::{
    launch::{LoadOverrides, LoadRequest, Source},
    KeepAlive,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    models: BTreeMap<String, EntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    path: Option<PathBuf>,
    gguf: Option<PathBuf>,
    hub: Option<String>,
    dtype: Option<String>,
    max_model_len: Option<usize>,
    kv_cache_memory: Option<toml::Value>,
    gpu_memory_utilization: Option<f32>,
    keep_alive: Option<toml::Value>,
    #[serde(default)]
    load: bool,
}

/// One catalog entry, checked.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    pub request: LoadRequest,
    /// Load when the server starts.
    pub load_at_start: bool,
}

/// The parsed catalog; empty without `--catalog`.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
}

impl Catalog {
    /// Reads and checks the TOML catalog at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("catalog {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| anyhow::anyhow!("catalog {}: {e}", path.display()))
    }

    /// Parses catalog text; relative paths are taken in `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = BTreeMap::new();
        for (name, e) in file.models {
            let entry = check_entry(&name, e, base).map_err(|msg| format!("[models.{name}]: {msg}"))?;
            entries.insert(name, entry);
        }
        Ok(Self { entries })
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(super::normalize(name))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.values()
    }
}

/// `2GiB`, `512MiB`, `1.5G`, `100k`, `4096` → bytes (binary units, as vLLM's `--kv-cache-memory`):
/// what catalog entries, load requests and the size flags accept.
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

fn check_entry(name: &str, e: EntryFile, base: &Path) -> Result<CatalogEntry, String> {
    super::check_model_name(name)?;
    let source = match (e.path, e.gguf, e.hub) {
        (Some(p), None, None) => Source::Dir(base.join(p)),
        (None, Some(g), None) => Source::Gguf(base.join(g)),
        (None, None, Some(h)) => Source::Hub(h),
        (None, None, None) => return Err("give one of `path`, `gguf` or `hub`".into()),
        _ => return Err("give only one of `path`, `gguf` or `hub`".into()),
    };
    let dtype = e.dtype.as_deref().map(parse_dtype).transpose().map_err(|err| format!("`dtype`: {err}"))?;
    if e.max_model_len == Some(0) {
        return Err("`max_model_len` must be >= 1".into());
    }
    let kv_cache = match (e.kv_cache_memory, e.gpu_memory_utilization) {
        (Some(_), Some(_)) => return Err("give `kv_cache_memory` or `gpu_memory_utilization`, not both".into()),
        (Some(toml::Value::Integer(n)), None) if n > 0 => Some(KvCacheBudget::Bytes(n as u64)),
        (Some(toml::Value::String(s)), None) => {
            Some(KvCacheBudget::Bytes(parse_size(&s).map_err(|err| format!("`kv_cache_memory`: {err}"))?))
        }
        (Some(other), None) => return Err(format!("`kv_cache_memory` must be a size like \"2GiB\", got {other}")),
        (None, Some(f)) if f > 0.0 && f <= 1.0 => Some(KvCacheBudget::GpuFraction(f)),
        (None, Some(f)) => return Err(format!("`gpu_memory_utilization` must be in (0, 1], got {f}")),
        (None, None) => None,
    };
    let keep_alive = match e.keep_alive {
        None => None,
        Some(toml::Value::String(s)) => Some(KeepAlive::parse(&s).map_err(|err| format!("`keep_alive`: {err}"))?),
        Some(toml::Value::Integer(n)) => Some(KeepAlive::from_secs(n as f64)),
        Some(toml::Value::Float(x)) => Some(KeepAlive::from_secs(x)),
        Some(other) => return Err(format!("`keep_alive` must be a duration like \"5m\" or seconds, got {other}")),
    };
    let overrides = LoadOverrides { dtype, max_model_len: e.max_model_len, kv_cache };
    let request = LoadRequest { name: name.to_owned(), source, overrides, keep_alive };
    Ok(CatalogEntry { request, load_at_start: e.load })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_are_checked_and_paths_are_relative_to_the_file() {
        let text = r#"
            [models.small]
            path = "models/small"
            dtype = "bf16"
            max_model_len = 512
            kv_cache_memory = "64MiB"
            keep_alive = "5m"
            load = true

            [models.quant]
            gguf = "/abs/q.gguf"

            [models.hubbed]
            hub = "org/name"
            gpu_memory_utilization = 0.5
            keep_alive = -1
        "#;
        let c = Catalog::parse(text, Path::new("/etc/flint")).unwrap();
        assert_eq!(c.names().collect::<Vec<_>>(), ["hubbed", "quant", "small"]);
        let small = c.get("small:latest").unwrap();
        assert!(small.load_at_start);
        assert_eq!(small.request.source, Source::Dir(PathBuf::from("/etc/flint/models/small")));
        assert_eq!(small.request.overrides.max_model_len, Some(512));
        assert_eq!(small.request.overrides.kv_cache, Some(KvCacheBudget::Bytes(64 << 20)));
        assert_eq!(small.request.keep_alive, Some(KeepAlive::For(Duration::from_secs(300))));
        assert_eq!(c.get("quant").unwrap().request.source, Source::Gguf(PathBuf::from("/abs/q.gguf")));
        let hubbed = &c.get("hubbed").unwrap().request;
        assert_eq!(hubbed.keep_alive, Some(KeepAlive::Forever));
        assert_eq!(c.get("quant").unwrap().request.keep_alive, None);
        assert_eq!(hubbed.overrides.kv_cache, Some(KvCacheBudget::GpuFraction(0.5)));
    }

    #[test]
    fn errors_name_the_entry_and_field() {
        let err = |t: &str| Catalog::parse(t, Path::new(".")).unwrap_err();
        assert!(err("[models.a]\ndtype = \"f32\"").contains("[models.a]: give one of `path`"));
        assert!(err("[models.a]\npath = \"x\"\nhub = \"o/n\"").contains("only one of"));
        assert!(err("[models.a]\npath = \"x\"\ndtype = \"int3\"").contains("`dtype`"));
        assert!(err("[models.a]\npath = \"x\"\nkv_cache_memory = \"lots\"").contains("`kv_cache_memory`"));
        assert!(err("[models.a]\npath = \"x\"\ngpu_memory_utilization = 2.0").contains("gpu_memory_utilization"));
        assert!(err("[models.a]\npath = \"x\"\nkeep_alive = \"soon\"").contains("`keep_alive`"));
        assert!(err("[models.a]\npath = \"x\"\nmax_model_len = 0").contains("max_model_len"));
        assert!(err("[models.a]\npath = \"x\"\ncolour = 1").contains("colour"));
        assert!(err("[models.\"a b\"]\npath = \"x\"").contains("name"));
        assert!(err("not toml = = 1").len() > 5);
    }
}
