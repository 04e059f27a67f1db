//! A streaming GGUF v3 writer: [`GgufWriter`] writes the header, the metadata ([`Value`]s, in
//! the order given), the [`TensorSpec`]s and then each tensor's data as it is produced, so at
//! most one tensor is held in memory.
//!
//! The file is written to a temporary file next to the destination and renamed into place
//! only by [`GgufWriter::finish`]: an error, or dropping the writer, leaves nothing behind.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use tempfile::NamedTempFile;

use super::value::{Array, Cursor, Value};
use super::GgufError;

const VERSION: u32 = 3;
/// ggml's default, used when the metadata has no `general.alignment`.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";

/// One tensor of the file to write: its name, dimensions in GGUF order (innermost first) and
/// element type. The data size follows from these.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorSpec {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorSpec {
    /// Size of the tensor's data in bytes, or None when the first dimension is not a whole
    /// number of blocks or the size overflows.
    pub fn n_bytes(&self) -> Option<u64> {
        let block = self.dtype.block_size();
        if self.dims.is_empty() || !self.dims[0].is_multiple_of(block) {
            return None;
        }
        let elems = self
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
        (elems / block as u64).checked_mul(self.dtype.type_size() as u64)
    }
}

/// GGML type id of a candle dtype (the ids the reader maps back).
pub(crate) fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Writes one GGUF file; see the module docs.
pub(crate) struct GgufWriter {
    out: PathBuf,
    tmp: NamedTempFile,
    w: BufWriter<File>,
    alignment: u64,
    tensors: Vec<(TensorSpec, u64)>,
    /// Index of the next tensor whose data is expected.
    next: usize,
    /// Bytes written so far.
    pos: u64,
}

impl GgufWriter {
    /// Creates the temporary file next to `out` and writes everything up to the tensor data.
    /// Tensor data offsets are laid out here, so every tensor's size must be known.
    pub fn create(
        out: &Path,
        metadata: &[(String, Value)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self, GgufError> {
        let invalid = |key: &str, msg: String| GgufError::InvalidValue {
            path: out.to_path_buf(),
            key: key.to_string(),
            msg,
        };
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut seen = HashMap::with_capacity(metadata.len());
        for (k, v) in metadata {
            if seen.insert(k.as_str(), ()).is_some() {
                return Err(invalid(k, "duplicate metadata key".into()));
            }
            if k == ALIGNMENT_KEY {
                alignment = match v {
                    Value::U32(a) if a.is_power_of_two() => u64::from(*a),
                    v => return Err(invalid(k, format!("{v:?} is not a power-of-two u32"))),
                };
            }
        }
        let mut names = HashMap::with_capacity(tensors.len());
        let mut laid_out = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            let bad = |msg: String| GgufError::BadTensor {
                path: out.to_path_buf(),
                tensor: t.name.clone(),
                msg,
            };
            if names.insert(t.name.clone(), ()).is_some() {
                return Err(bad("duplicate tensor name".into()));
            }
            if t.dims.is_empty() || t.dims.len() > 4 || t.dims.contains(&0) {
                return Err(bad(format!("invalid dimensions {:?}", t.dims)));
            }
            let n = t.n_bytes().ok_or_else(|| {
                bad(format!(
                    "dimensions {:?} do not fit {:?} blocks of {}",
                    t.dims,
                    t.dtype,
                    t.dtype.block_size()
                ))
            })?;
            laid_out.push((t, offset));
            offset = offset
                .checked_add(n)
                .and_then(|o| o.checked_next_multiple_of(alignment))
                .ok_or_else(|| invalid(ALIGNMENT_KEY, "tensor data size overflows".into()))?;
        }

        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let write_err = |source| GgufError::Write {
            path: out.to_path_buf(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".flint-quantize-")
            .suffix(".gguf.tmp")
            .tempfile_in(&parent)
            .map_err(|source| GgufError::Write {
                path: parent.clone(),
                source,
            })?;
        let file = tmp.as_file().try_clone().map_err(write_err)?;
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(laid_out.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut header, k);
            header.extend_from_slice(&value_type_id(v).to_le_bytes());
            put_value(&mut header, v);
        }
        for (t, offset) in &laid_out {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                header.extend_from_slice(&(d as u64).to_le_bytes());
            }
            header.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
        }
        let mut this = Self {
            out: out.to_path_buf(),
            tmp,
            w: BufWriter::with_capacity(1 << 20, file),
            alignment,
            tensors: laid_out,
            next: 0,
            pos: 0,
        };
        this.write(&header)?;
        this.pad()?;
        Ok(this)
    }

    /// The tensor whose data [`Self::write_tensor`] expects next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next).map(|(t, _)| t)
    }

    /// Writes the data of the next tensor, which must be named `name` and have exactly the
    /// size its spec implies.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let bad = |msg: String| GgufError::BadTensor {
            path: self.out.clone(),
            tensor: name.to_string(),
            msg,
        };
        let Some((spec, _)) = self.tensors.get(self.next) else {
            return Err(bad("more tensors written than declared".into()));
        };
        if spec.name != name {
            return Err(bad(format!(
                "written out of order: expected `{}`",
                spec.name
            )));
        }
        let want = spec.n_bytes().unwrap_or(0);
        if data.len() as u64 != want {
            return Err(bad(format!(
                "{} bytes of data, expected {want} for {:?} {:?}",
                data.len(),
                spec.dtype,
                spec.dims
            )));
        }
        self.write(data)?;
        // ggml pads after every tensor, the last one included.
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Checks that every tensor was written, syncs the file and renames it to the
    /// destination. Returns the file's size.
    pub fn finish(mut self) -> Result<u64, GgufError> {
        if let Some((spec, _)) = self.tensors.get(self.next) {
            return Err(GgufError::MissingTensor {
                path: self.out.clone(),
                tensor: spec.name.clone(),
            });
        }
        let write_err = |source| GgufError::Write {
            path: self.out.clone(),
            source,
        };
        self.w.flush().map_err(write_err)?;
        self.tmp.as_file().sync_all().map_err(write_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // NamedTempFile is created 0600; a model file should be readable like any other.
            let _ = fs::set_permissions(self.tmp.path(), fs::Permissions::from_mode(0o644));
        }
        let Self { out, tmp, pos, .. } = self;
        tmp.persist(&out).map_err(|e| GgufError::Write {
            path: out.clone(),
            source: e.error,
        })?;
        Ok(pos)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.w.write_all(bytes).map_err(|source| GgufError::Write {
            path: self.out.clone(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), GgufError> {
        let n = self.pos.next_multiple_of(self.alignment) - self.pos;
        self.write(&vec![0u8; n as usize])
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn array_elem_type_id(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::Str(_) => 8,
        Array::Nested(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

/// A value's body (without its type id).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(out, a),
    }
}

/// An array: element type, length, elements. Nested arrays repeat this for each element.
fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&array_elem_type_id(a).to_le_bytes());
    macro_rules! prim {
        ($v:expr) => {{
            out.extend_from_slice(&($v.len() as u64).to_le_bytes());
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    match a {
        Array::U8(v) => prim!(v),
        Array::I8(v) => prim!(v),
        Array::U16(v) => prim!(v),
        Array::I16(v) => prim!(v),
        Array::U32(v) => prim!(v),
        Array::I32(v) => prim!(v),
        Array::F32(v) => prim!(v),
        Array::U64(v) => prim!(v),
        Array::I64(v) => prim!(v),
        Array::F64(v) => prim!(v),
        Array::Bool(v) => {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend(v.iter().map(|&b| u8::from(b)));
        }
        Array::Str(v) => {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            v.iter().for_each(|s| put_str(out, s));
        }
        Array::Nested(v) => {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            v.iter().for_each(|a| put_array(out, a));
        }
    }
}

/// The metadata of a GGUF file in file order (our reader keeps it in a map, which loses the
/// order; copying it in order keeps a requantized file's metadata as llama.cpp wrote it).
/// The file is mapped, so only the pages of the header are read.
pub(crate) fn ordered_metadata(path: &Path) -> Result<Vec<(String, Value)>, GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the map is only read; as for the reader, the file must not be truncated by
    // another process meanwhile.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    parse_metadata(path, &mmap)
}

fn parse_metadata(path: &Path, data: &[u8]) -> Result<Vec<(String, Value)>, GgufError> {
    let mut c = Cursor { data, pos: 0, path };
    let _magic: [u8; 4] = c.bytes("magic")?;
    let _version = c.u32("version")?;
    let _n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata key/value count")?;
    let mut out = Vec::new();
    for _ in 0..n_kv {
        let key = c.strict_string("metadata key", 4096)?;
        let type_id = c.u32("metadata value type")?;
        let value = c.value(type_id, 0)?;
        out.push((key, value));
    }
    Ok(out)
}
