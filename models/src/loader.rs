//! Loading a Hugging Face model directory: config.json, generation_config.json and the
//! safetensors weights (one file or shards named by model.safetensors.index.json).

use std::{
    collections::BTreeSet,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::{
    error::{ModelError, Result},
    gguf::{GgufWeights, QuantType, GGUF_LINK},
    layers::weights::{Isq, QuantSource, Vb},
    Model, ModelConfig,
};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute and storage dtype; `None` picks f32 on the CPU and bf16 on a GPU. Weights stored
    /// in another dtype are converted as they load.
    pub dtype: Option<DType>,
    /// In-situ quantization of a safetensors checkpoint's projections to this type as they
    /// load (`--quantization`); a GGUF-backed directory keeps the file's own types.
    pub quantization: Option<QuantType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: None, quantization: None }
    }
}

/// The weights of a model directory: safetensors (memory-mapped), or the GGUF file a
/// `keep_quantized` conversion linked as `model.gguf`.
pub(crate) enum Checkpoint {
    Safetensors(Vec<PathBuf>),
    Gguf(Arc<GgufWeights>),
}

impl Checkpoint {
    /// Finds and checks the weights of `dir` (headers only; no tensor is read).
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let link = dir.join(GGUF_LINK);
        if link.exists() && !dir.join("model.safetensors").exists() && !dir.join("model.safetensors.index.json").exists() {
            let w = GgufWeights::open(&link).map_err(|e| ModelError::CorruptWeights { path: link.clone(), reason: e.to_string() })?;
            return Ok(Self::Gguf(w));
        }
        let files = weight_files(dir)?;
        for f in &files {
            check_safetensors(f)?;
        }
        Ok(Self::Safetensors(files))
    }

    /// The dense view for candle's [`VarBuilder`] (`dtype` on `device`).
    pub(crate) fn var_builder(&self, dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        match self {
            // SAFETY: the files are memory-mapped read-only; flint never writes them, and their
            // headers were just validated. Like every mmap user we rely on nobody truncating them
            // while the model is loaded.
            Self::Safetensors(files) => unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
                .map_err(|source| ModelError::Weights { dir: dir.to_owned(), source }),
            Self::Gguf(w) => Ok(w.var_builder(dtype, device)),
        }
    }
}

/// Parses a user-facing dtype name.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        _ => Err(ModelError::UnsupportedDType(s.to_owned())),
    }
}

/// Defaults for generation from `generation_config.json` (all optional).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub do_sample: Option<bool>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        One(u32),
        Many(Vec<u32>),
        Null(()),
    }
    Ok(match V::deserialize(d)? {
        V::One(x) => vec![x],
        V::Many(v) => v,
        V::Null(()) => vec![],
    })
}

/// A loaded model with what its directory says about it.
pub struct LoadedModel {
    pub model: Box<dyn Model>,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub dir: PathBuf,
    pub dtype: DType,
    pub device: Device,
    /// Where quantized weights came from (`None`: dense), for logs and `/v1/models`.
    pub quantization: Option<String>,
}

/// Loads the model in `dir`.
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile { path: dir.to_owned() });
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let generation = read_generation_config(dir)?;
    let checkpoint = Checkpoint::open(dir)?;
    let dtype = opts.dtype.unwrap_or(if opts.device.is_cpu() { DType::F32 } else { DType::BF16 });
    let vb = checkpoint.var_builder(dir, dtype, &opts.device)?;
    let quant: Option<Arc<dyn QuantSource>> = match (&checkpoint, opts.quantization) {
        (Checkpoint::Gguf(w), _) => Some(w.clone()),
        (Checkpoint::Safetensors(_), Some(qtype)) => Some(Arc::new(Isq { qtype })),
        (Checkpoint::Safetensors(_), None) => None,
    };
    let quantization = quant.as_ref().map(|q| q.describe());
    if let Some(q) = &quantization {
        tracing::info!("{}: quantized weights from {q}", dir.display());
    }
    let model = crate::arch::load(Vb::new(vb, quant), &config)
        .map_err(|source| ModelError::Weights { dir: dir.to_owned(), source })?;
    // The GGUF map (if any) goes with `checkpoint` here: the model holds its own copies.
    drop(checkpoint);
    Ok(LoadedModel { model, config, generation, dir: dir.to_owned(), dtype, device: opts.device.clone(), quantization })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    ModelError::parse_json(&text, path)
}

pub(crate) fn read_generation_config(dir: &Path) -> Result<GenerationConfig> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        read_json(&path)
    } else {
        Ok(GenerationConfig::default())
    }
}

/// The safetensors files of `dir`: the shards of model.safetensors.index.json, else
/// model.safetensors.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index: Index = read_json(&index_path)?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        if shards.is_empty() {
            return Err(ModelError::CorruptWeights {
                path: index_path,
                reason: "weight_map is empty".into(),
            });
        }
        return shards
            .into_iter()
            .map(|name| {
                let rel = Path::new(name);
                // Shard names come from a file: keep them inside the model directory.
                if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                    return Err(ModelError::CorruptWeights {
                        path: index_path.clone(),
                        reason: format!("shard name {name:?} leaves the model directory"),
                    });
                }
                let path = dir.join(rel);
                if !path.is_file() {
                    return Err(ModelError::MissingFile { path });
                }
                Ok(path)
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    if std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "bin" || x == "pt")))
        .unwrap_or(false)
    {
        return Err(ModelError::CorruptWeights {
            path: dir.to_owned(),
            reason: "only PyTorch pickle weights (.bin/.pt) found; flint loads safetensors only".into(),
        });
    }
    Err(ModelError::MissingFile { path: single })
}

/// Checks the header of a safetensors file (offsets within the file, known dtypes) so a
/// corrupt file is reported by name before any tensor is read.
pub(crate) fn check_safetensors(path: &Path) -> Result<()> {
    let corrupt = |reason: String| ModelError::CorruptWeights { path: path.to_owned(), reason };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    // SAFETY: read-only map of a file we only read; see `load`.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| corrupt(e.to_string()))?;
    for (name, view) in st.tensors() {
        use safetensors::Dtype::*;
        if !matches!(view.dtype(), F32 | F16 | BF16 | F64 | I64 | U32 | U8 | I32 | I16) {
            return Err(corrupt(format!("tensor {name} has unsupported dtype {:?}", view.dtype())));
        }
    }
    Ok(())
}
