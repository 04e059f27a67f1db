//! Starting an engine for a [`LoadRequest`]: where the weights come from ([`Source`]), the
//! per-model options ([`LoadOverrides`]) over the server's engine configuration (a template
//! [`EngineConfig`] plus [`LaunchSettings`], both filled by `flint serve` from its flags), and
//! GGUF conversion. [`Launch`] is the seam the registry loads through, so tests can hold a
//! load mid-way or make it fail.

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use anyhow::Context;
use flint_engine::{
    models::{
        gguf::{self, ConvertOptions, OutDType},
        source::{self, ModelRef, ResolveOptions},
        DType,
    },
    EngineConfig, EngineHandle, KvCacheBudget,
};

use super::{KeepAlive, Served};
use crate::chat_template::ChatTemplate;

/// Where a model's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A Hugging Face-style directory (config.json, safetensors, tokenizer).
    Dir(PathBuf),
    /// A GGUF file, served in its own quantization (config and tokenizer files are written
    /// once into flint's cache).
    Gguf(PathBuf),
    /// `org/name[@rev]` from the Hugging Face cache (or downloaded when allowed).
    Hub(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::Gguf(p) => write!(f, "gguf:{}", p.display()),
            Self::Hub(r) => write!(f, "hf:{r}"),
        }
    }
}

/// Per-model options over the server's engine flags; `None` keeps the flag's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOverrides {
    pub dtype: Option<DType>,
    pub max_model_len: Option<usize>,
    pub kv_cache: Option<KvCacheBudget>,
}

/// A checked order to load one model under `name`.
#[derive(Clone, Debug)]
pub struct LoadRequest {
    pub name: String,
    pub source: Source,
    pub overrides: LoadOverrides,
    /// `None`: the server's `--keep-alive`.
    pub keep_alive: Option<KeepAlive>,
}

/// Loads models; blocking (the registry calls it off the async threads). `progress` is told
/// each phase as it starts.
pub trait Launch: Send + Sync {
    fn launch(&self, req: &LoadRequest, progress: &dyn Fn(&'static str)) -> anyhow::Result<Served>;
}

/// What loading needs beyond the engine configuration.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    /// Converted GGUF models live here, one directory per source file.
    pub convert_dir: PathBuf,
    /// Whether `Source::Hub` may download (startup yes; runtime loads only use the cache).
    pub allow_download: bool,
    /// `--keep-alive`: for models whose load did not say.
    pub keep_alive: KeepAlive,
}

/// The real launcher: the server's engine configuration as a template (its `model_dir` is
/// replaced by each load's) and the [`LaunchSettings`].
pub struct Launcher {
    pub template: EngineConfig,
    pub settings: LaunchSettings,
}

impl Launcher {
    pub fn new(template: EngineConfig, settings: LaunchSettings) -> Self {
        Self { template, settings }
    }

    /// The engine configuration for `dir`: the template with `o` over it.
    pub fn engine_config(&self, dir: &Path, o: &LoadOverrides) -> EngineConfig {
        let mut cfg = self.template.clone();
        cfg.model_dir = dir.to_owned();
        if let Some(d) = o.dtype {
            cfg.load.dtype = Some(d);
        }
        if let Some(m) = o.max_model_len {
            cfg.max_model_len = Some(m);
        }
        if let Some(k) = o.kv_cache {
            cfg.kv_cache = k;
        }
        cfg
    }

    fn model_dir(&self, source: &Source, progress: &dyn Fn(&'static str)) -> anyhow::Result<PathBuf> {
        match source {
            Source::Dir(d) => Ok(d.clone()),
            Source::Hub(r) => {
                progress("resolving");
                let r: ModelRef = r.parse()?;
                let opts = ResolveOptions { allow_download: self.settings.allow_download, progress: false };
                Ok(source::resolve(&r, &opts)?)
            }
            Source::Gguf(file) => gguf_model_dir(file, &self.settings.convert_dir, progress),
        }
    }
}

/// The model directory of a GGUF file: its config and tokenizer files, written once into
/// `convert_dir`, next to a link to the file, whose tensors are served as they are stored
/// (no dequantized copy is written).
pub fn gguf_model_dir(file: &Path, convert_dir: &Path, progress: &dyn Fn(&'static str)) -> anyhow::Result<PathBuf> {
    let out = convert_dir.join(converted_name(file)?);
    if out.join("config.json").is_file() {
        return Ok(out);
    }
    progress("reading the GGUF metadata");
    std::fs::create_dir_all(convert_dir).with_context(|| format!("cannot create {}", convert_dir.display()))?;
    let opts = ConvertOptions { dtype: OutDType::F32, progress: false, keep_quantized: true };
    let report = match gguf::convert(file, &out, &opts) {
        Ok(r) => r,
        // Another load of the same file got there first.
        Err(gguf::GgufError::OutDirNotEmpty { .. }) if out.join("config.json").is_file() => return Ok(out),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
    };
    tracing::info!("{} is served from {} ({} tensors)", file.display(), report.out_dir.display(), report.tensors);
    Ok(out)
}

impl Launch for Launcher {
    fn launch(&self, req: &LoadRequest, progress: &dyn Fn(&'static str)) -> anyhow::Result<Served> {
        let dir = self.model_dir(&req.source, progress)?;
        progress("loading weights");
        let cfg = self.engine_config(&dir, &req.overrides);
        let engine = EngineHandle::start(cfg).with_context(|| format!("loading the model in {}", dir.display()))?;
        let template = ChatTemplate::from_tokenizer_config(&engine.tokenizer().template_config())?;
        if template.is_none() {
            tracing::warn!("{} has no chat template: chat requests to `{}` will answer 400", dir.display(), req.name);
        }
        let mut served = Served::new(engine, req.name.clone(), template);
        served.source = req.source.to_string();
        served.set_keep_alive(req.keep_alive.unwrap_or(self.settings.keep_alive));
        Ok(served)
    }
}

/// A GGUF's directory name: the file's stem plus a hash of its canonical path, size and
/// modification time, so a changed file is read again (`-q`: the kind that links the file,
/// apart from the f32 copies earlier versions wrote).
fn converted_name(file: &Path) -> anyhow::Result<String> {
    let real = std::fs::canonicalize(file).with_context(|| format!("GGUF file {}", file.display()))?;
    let meta = std::fs::metadata(&real).with_context(|| format!("GGUF file {}", file.display()))?;
    if !meta.is_file() {
        anyhow::bail!("GGUF file {} is not a file", file.display());
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    real.hash(&mut h);
    meta.len().hash(&mut h);
    meta.modified().ok().hash(&mut h);
    let stem = real.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    Ok(format!("{stem}-{:016x}-q", h.finish()))
}
