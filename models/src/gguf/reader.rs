//! A bounds-checked GGUF (v2, v3; little-endian) reader over a memory map.
//!
//! Every count, length and offset read from the file is checked against what is left of the
//! file before anything is allocated, and all arithmetic on them is checked, so a truncated
//! or hostile file gives a [`GgufError`] instead of a panic or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use memmap2::Mmap;

use super::value::{widen_f32, Array, Cursor, Value};
use super::GgufError;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest metadata key or tensor name accepted (ggml itself limits tensor names to 64 bytes).
const MAX_NAME_LEN: u64 = 4096;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Smallest possible encoding of one metadata pair: key length (8), type (4), a u8 value (1).
const MIN_KV_BYTES: usize = 13;
/// Smallest possible encoding of one tensor info: name length (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 24;
/// One tensor of the file, already checked: its data lies inside the file.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF (ggml) order: innermost first, the reverse of PyTorch/HF order.
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte range of the tensor's data in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    /// Dimensions in PyTorch/HF order (outermost first).
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed, memory-mapped GGUF file.
pub(crate) struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                offset: 0,
                msg: format!("file is {len} bytes long, too short for a GGUF header (24 bytes)"),
            });
        }
        // SAFETY: the map is only read; as with every mmap-based loader, the file must not be
        // truncated by another process while we read it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors) = parse(path, &mmap)?;
        tracing::debug!(
            "{}: GGUF v{version}, {} tensors, {} metadata keys",
            path.display(),
            tensors.len(),
            metadata.len()
        );
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    pub fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.type_name(),
        }
    }

    pub fn invalid(&self, key: &str, msg: impl Into<String>) -> GgufError {
        GgufError::InvalidValue {
            path: self.path.clone(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "string", v)),
        }
    }

    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// An integer value of any integer type, which must be non-negative and fit a usize.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.invalid(key, format!("{n} is too large"))),
                None => Err(self.wrong_type(key, "non-negative integer", v)),
            },
        }
    }

    /// An integer value of any integer type, as i64.
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::I8(v)) => Ok(Some((*v).into())),
            Some(Value::I16(v)) => Ok(Some((*v).into())),
            Some(Value::I32(v)) => Ok(Some((*v).into())),
            Some(Value::I64(v)) => Ok(Some(*v)),
            Some(v) => match v.as_u64() {
                Some(n) => i64::try_from(n)
                    .map(Some)
                    .map_err(|_| self.invalid(key, format!("{n} is too large"))),
                None => Err(self.wrong_type(key, "integer", v)),
            },
        }
    }

    /// A float value (f32 or f64). f32 values are widened through their shortest decimal form,
    /// so that 1e-5 stored as f32 comes back as 1e-5 and not as 9.999999747378752e-6.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(widen_f32(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(v) => Err(self.wrong_type(key, "float", v)),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "bool", v)),
        }
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::Str(v))) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(key, "array of string", v)),
        }
    }

    /// An array of any integer type, as i64.
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let out: Vec<i64> = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(Array::I32(v))) => v.iter().map(|&x| x.into()).collect(),
            Some(Value::Array(Array::U32(v))) => v.iter().map(|&x| x.into()).collect(),
            Some(Value::Array(Array::I8(v))) => v.iter().map(|&x| x.into()).collect(),
            Some(Value::Array(Array::U8(v))) => v.iter().map(|&x| x.into()).collect(),
            Some(Value::Array(Array::I16(v))) => v.iter().map(|&x| x.into()).collect(),
            Some(Value::Array(Array::U16(v))) => v.iter().map(|&x| x.into()).collect(),
            Some(Value::Array(Array::I64(v))) => v.clone(),
            Some(v) => return Err(self.wrong_type(key, "array of integer", v)),
        };
        Ok(Some(out))
    }

    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::F32(v))) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(key, "array of f32", v)),
        }
    }

    /// The raw bytes of a tensor (range checked when the file was parsed).
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let end = t.start.checked_add(t.len);
        end.and_then(|end| self.mmap.get(t.start..end))
            .ok_or_else(|| GgufError::BadTensor {
                path: self.path.clone(),
                tensor: t.name.clone(),
                msg: format!("data range {}+{} lies outside the file", t.start, t.len),
            })
    }
}

/// GGML type ids that candle can dequantize.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Names of the GGML types candle cannot dequantize, for error messages.
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

pub(super) type Parsed = (u32, HashMap<String, Value>, Vec<TensorInfo>);

/// Parses a whole GGUF file held in `data`; `path` only names it in errors.
pub(super) fn parse(path: &Path, data: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { data, pos: 0, path };
    let magic: [u8; 4] = c.bytes("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            magic,
        });
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let n_tensors = c.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
    let n_kv = c.count("metadata key/value count", MIN_KV_BYTES)?;

    let mut metadata = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.strict_string("metadata key", MAX_NAME_LEN)?;
        let type_id = c.u32("metadata value type")?;
        let value = c.value(type_id, 0).map_err(|e| match e {
            GgufError::Malformed { path, offset, msg } => GgufError::Malformed {
                path,
                offset,
                msg: format!("key `{key}`: {msg}"),
            },
            e => e,
        })?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(c.err(at, format!("duplicate metadata key `{key}`")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(GgufError::InvalidValue {
                path: path.to_path_buf(),
                key: "general.alignment".into(),
                msg: format!("{a} is not a power of two"),
            })
        }
        Some(v) => {
            return Err(GgufError::WrongType {
                path: path.to_path_buf(),
                key: "general.alignment".into(),
                expected: "u32",
                found: v.type_name(),
            })
        }
    };

    // (name, dims, dtype, relative offset, byte length, position of the info in the file)
    let mut infos = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::HashSet::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let at = c.pos;
        let name = c.strict_string("tensor name", MAX_NAME_LEN)?;
        let bad = |msg: String| GgufError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            msg,
        };
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions at offset {at} (expected 1..={MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = c.u64("tensor dimension")?;
            if d == 0 {
                return Err(bad(format!("has a zero dimension (info at offset {at})")));
            }
            elems = elems
                .checked_mul(d)
                .ok_or_else(|| bad(format!("element count overflows (info at offset {at})")))?;
            dims.push(d);
        }
        let type_id = c.u32("tensor type")?;
        let offset = c.u64("tensor data offset")?;
        let dtype = ggml_dtype(type_id).ok_or_else(|| GgufError::UnsupportedTensorType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            type_id,
            type_name: ggml_type_name(type_id).to_string(),
        })?;
        let block = dtype.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(bad(format!(
                "first dimension {} is not a multiple of the {dtype:?} block size {block}",
                dims[0]
            )));
        }
        let n_bytes = (elems / block)
            .checked_mul(dtype.type_size() as u64)
            .ok_or_else(|| bad("byte size overflows".into()))?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let dims = dims
            .into_iter()
            .map(usize::try_from)
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| bad("dimension does not fit in memory".into()))?;
        if !seen.insert(name.clone()) {
            return Err(bad(format!("duplicate tensor name (info at offset {at})")));
        }
        infos.push((name, dims, dtype, offset, n_bytes));
    }

    let data_start = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.err(c.pos, "data section start overflows"))?;
    let file_len = data.len() as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, dtype, offset, n_bytes) in infos {
        let range = data_start
            .checked_add(offset)
            .and_then(|s| s.checked_add(n_bytes).map(|e| (s, e)));
        match range {
            Some((start, end)) if end <= file_len => tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                start: start as usize,
                len: n_bytes as usize,
            }),
            _ => {
                return Err(GgufError::BadTensor {
                    path: path.to_path_buf(),
                    tensor: name,
                    msg: format!(
                        "data at offset {offset} (+{n_bytes} bytes) past data section start {data_start} ends beyond the end of the file ({file_len} bytes): file truncated?"
                    ),
                })
            }
        }
    }
    Ok((version, metadata, tensors))
}
