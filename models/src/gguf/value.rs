//! GGUF metadata values and the bounds-checked byte cursor the reader parses with.

use std::path::Path;

use super::GgufError;

/// Nesting limit for arrays of arrays (guards the stack against hostile files).
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Array),
}

/// A metadata array, stored typed so that its memory stays proportional to its size on disk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Nested(Vec<Array>),
}

impl Value {
    pub(crate) fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::Str(_) => "string".into(),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
            Value::Array(a) => format!("array of {}", a.elem_type_name()),
        }
    }

    /// The value as a non-negative integer, whatever its integer type.
    pub(super) fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

impl Array {
    fn elem_type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::F32(_) => "f32",
            Array::Bool(_) => "bool",
            Array::Str(_) => "string",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F64(_) => "f64",
            Array::Nested(_) => "array",
        }
    }
}

/// Widens an f32 through its shortest round-tripping decimal representation.
pub(crate) fn widen_f32(v: f32) -> f64 {
    v.to_string().parse::<f64>().unwrap_or(v as f64)
}

/// Byte cursor that turns every out-of-bounds read into a `Malformed` error.
pub(super) struct Cursor<'a> {
    pub data: &'a [u8],
    pub pos: usize,
    pub path: &'a Path,
}

impl<'a> Cursor<'a> {
    pub(super) fn err(&self, offset: usize, msg: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            msg: msg.into(),
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                self.err(
                    self.pos,
                    format!(
                        "truncated: {what} needs {n} bytes, only {} left",
                        self.remaining()
                    ),
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A count of items that each take at least `min_item_bytes` bytes: bounded by the rest of
    /// the file so that nothing is ever allocated for items that cannot be there.
    pub(super) fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > max {
            return Err(self.err(
                at,
                format!(
                    "{what} is {n}, but the {} bytes left can hold at most {max}",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn raw_string(&mut self, what: &str, max_len: u64) -> Result<&'a [u8], GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > max_len {
            return Err(self.err(
                at,
                format!("{what}: length {len} exceeds the limit of {max_len} bytes"),
            ));
        }
        if len > self.remaining() as u64 {
            return Err(self.err(
                at,
                format!(
                    "truncated: {what} of {len} bytes, only {} left",
                    self.remaining()
                ),
            ));
        }
        self.take(len as usize, what)
    }

    /// A string value; invalid UTF-8 is replaced rather than rejected.
    fn string(&mut self, what: &str, max_len: u64) -> Result<String, GgufError> {
        Ok(String::from_utf8_lossy(self.raw_string(what, max_len)?).into_owned())
    }

    /// A key or tensor name, which must be valid UTF-8.
    pub(super) fn strict_string(&mut self, what: &str, max_len: u64) -> Result<String, GgufError> {
        let at = self.pos;
        let raw = self.raw_string(what, max_len)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.err(at, format!("{what} is not valid UTF-8"))),
        }
    }

    pub(super) fn value(&mut self, type_id: u32, depth: usize) -> Result<Value, GgufError> {
        let v = match type_id {
            0 => Value::U8(u8::from_le_bytes(self.bytes("u8 value")?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes("i8 value")?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes("u16 value")?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes("i16 value")?)),
            4 => Value::U32(self.u32("u32 value")?),
            5 => Value::I32(i32::from_le_bytes(self.bytes("i32 value")?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes("f32 value")?)),
            7 => {
                let at = self.pos;
                match self.bytes::<1>("bool value")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.err(at, format!("invalid bool value {b}"))),
                }
            }
            8 => Value::Str(self.string("string value", u64::MAX)?),
            9 => Value::Array(self.array(depth)?),
            10 => Value::U64(self.u64("u64 value")?),
            11 => Value::I64(i64::from_le_bytes(self.bytes("i64 value")?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes("f64 value")?)),
            t => {
                return Err(self.err(
                    self.pos.saturating_sub(4),
                    format!("unknown metadata value type {t}"),
                ))
            }
        };
        Ok(v)
    }

    fn array(&mut self, depth: usize) -> Result<Array, GgufError> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(
                at,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        let elem_type = self.u32("array element type")?;
        macro_rules! prim {
            ($variant:ident, $t:ty) => {{
                const SZ: usize = std::mem::size_of::<$t>();
                let n = self.count("array length", SZ)?;
                let raw = self.take(n * SZ, "array data")?;
                Array::$variant(
                    raw.chunks_exact(SZ)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; SZ])))
                        .collect(),
                )
            }};
        }
        let arr = match elem_type {
            0 => prim!(U8, u8),
            1 => prim!(I8, i8),
            2 => prim!(U16, u16),
            3 => prim!(I16, i16),
            4 => prim!(U32, u32),
            5 => prim!(I32, i32),
            6 => prim!(F32, f32),
            7 => {
                let n = self.count("array length", 1)?;
                let start = self.pos;
                let raw = self.take(n, "array data")?;
                if let Some(i) = raw.iter().position(|&b| b > 1) {
                    return Err(self.err(start + i, format!("invalid bool value {}", raw[i])));
                }
                Array::Bool(raw.iter().map(|&b| b == 1).collect())
            }
            8 => {
                let n = self.count("array length", 8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string("string array element", u64::MAX)?);
                }
                Array::Str(v)
            }
            9 => {
                let n = self.count("array length", 12)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(depth + 1)?);
                }
                Array::Nested(v)
            }
            10 => prim!(U64, u64),
            11 => prim!(I64, i64),
            12 => prim!(F64, f64),
            t => return Err(self.err(at, format!("unknown array element type {t}"))),
        };
        Ok(arr)
    }
}
