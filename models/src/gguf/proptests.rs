//! Property tests of the GGUF reader and converter: arbitrary bytes, hostile headers (counts and
//! lengths up to 2^64), valid files with mutated bytes, metadata or tensor infos. Whatever the
//! input, parsing never panics, allocates at most a small multiple of the file's size, and every
//! error names the file; a conversion either succeeds or fails leaving nothing behind.
//!
//! Case counts are bounded so the whole file runs in a few seconds in release mode.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;

use super::reader::parse;
use super::test_writer::{put_str, tiny_llama, GgufBuilder, Meta};
use super::{convert, ConvertOptions, GgufError};
use crate::test_support::{cases, measure};

const NAME: &str = "fuzz.gguf";

/// Allocation allowed for parsing `len` bytes: the typed metadata and tensor infos take a few
/// times their size on disk, plus fixed overhead.
fn alloc_budget(len: usize) -> usize {
    32 * len + (64 << 10)
}

/// Parses `bytes` in memory, checking the allocation bound and that an error names the file.
fn parse_checked(bytes: &[u8]) -> Result<(), GgufError> {
    let (res, used) = measure(|| parse(Path::new(NAME), bytes).map(|_| ()));
    assert!(
        used.total <= alloc_budget(bytes.len()),
        "parsing {} bytes allocated {} bytes (largest {}): {res:?}",
        bytes.len(),
        used.total,
        used.largest
    );
    if let Err(e) = &res {
        assert!(
            e.to_string().starts_with(NAME),
            "error does not name the file: {e}"
        );
    }
    res
}

/// Converts `bytes` (written as a file) and checks that a failure names the file and leaves
/// only the input behind.
fn convert_checked(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join(NAME);
    std::fs::write(&gguf, bytes).expect("write");
    let out = dir.path().join("out");
    let opts = ConvertOptions::default();
    match convert(&gguf, &out, &opts) {
        Ok(report) => assert!(report.out_dir.join("config.json").is_file()),
        Err(e) => {
            assert!(
                e.to_string().contains(NAME),
                "error does not name the file: {e}"
            );
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .filter(|n| n != NAME)
                .collect();
            assert!(
                left.is_empty(),
                "a failed conversion left {left:?} behind ({e})"
            );
        }
    }
}

/// Values that break naive readers: zero, small, powers of two around 2^32/2^40/2^60, maxima.
fn hostile_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..40,
        1 => Just(u32::MAX as u64),
        1 => Just(1u64 << 32),
        1 => Just(1u64 << 40),
        1 => Just(1u64 << 60),
        1 => Just(i64::MAX as u64),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 8 + 1),
        2 => any::<u64>(),
    ]
}

fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..16, 1 => Just(u32::MAX), 1 => Just(1u32 << 31), 1 => any::<u32>()]
}

/// One field of a hand-made header, encoded as the reader expects it or with a wrong length.
#[derive(Clone, Debug)]
enum Field {
    /// A string with its true length, or with `claimed` instead.
    Str {
        s: String,
        claimed: Option<u64>,
    },
    U32(u32),
    U64(u64),
    Bytes(Vec<u8>),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        3 => ("[a-z._]{0,12}", proptest::option::weighted(0.3, hostile_u64()))
            .prop_map(|(s, claimed)| Field::Str { s, claimed }),
        3 => hostile_u32().prop_map(Field::U32),
        2 => hostile_u64().prop_map(Field::U64),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Field::Bytes),
    ]
}

fn encode(version: u32, n_tensors: u64, n_kv: u64, fields: &[Field]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&n_tensors.to_le_bytes());
    out.extend_from_slice(&n_kv.to_le_bytes());
    for f in fields {
        match f {
            Field::Str { s, claimed: None } => put_str(&mut out, s),
            Field::Str {
                s,
                claimed: Some(n),
            } => {
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Field::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Field::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Field::Bytes(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// A mutation of a valid file's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(Index),
    Byte(Index, u8),
    U64(Index, u64),
    U32(Index, u32),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        3 => (any::<Index>(), hostile_u64()).prop_map(|(i, v)| Mutation::U64(i, v)),
        2 => (any::<Index>(), hostile_u32()).prop_map(|(i, v)| Mutation::U32(i, v)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

/// Applies `m` within the first `span` bytes (the header, where the structure is).
fn apply(bytes: &mut Vec<u8>, m: &Mutation, span: usize) {
    let span = span.min(bytes.len()).max(1);
    let put = |bytes: &mut Vec<u8>, at: usize, v: &[u8]| {
        let end = (at + v.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&v[..end - at]);
    };
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        Mutation::Byte(i, b) if !bytes.is_empty() => {
            let at = i.index(span);
            bytes[at] = *b;
        }
        Mutation::U64(i, v) if !bytes.is_empty() => put(bytes, i.index(span), &v.to_le_bytes()),
        Mutation::U32(i, v) if !bytes.is_empty() => put(bytes, i.index(span), &v.to_le_bytes()),
        Mutation::Delete(i, n) if !bytes.is_empty() => {
            let at = i.index(span);
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Insert(i, b) => {
            let at = i.index(span + 1).min(bytes.len());
            bytes.splice(at..at, b.iter().copied());
        }
        _ => {}
    }
}

fn hostile_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(-1.0f32),
        Just(0.0f32),
        Just(f32::MIN_POSITIVE),
        any::<f32>()
    ]
}

/// One hostile metadata value of every type.
#[derive(Clone, Debug)]
struct Hostile {
    u32: u32,
    u64: u64,
    i32: i32,
    f32: f32,
    bool: bool,
    str: String,
    str_arr: Vec<String>,
    i32_arr: Vec<i32>,
    f32_arr: Vec<f32>,
}

fn hostile_values() -> impl Strategy<Value = Hostile> {
    (
        (
            hostile_u32(),
            hostile_u64(),
            any::<i32>(),
            hostile_f32(),
            any::<bool>(),
        ),
        "\\PC{0,12}",
        proptest::collection::vec("\\PC{0,4}", 0..6),
        proptest::collection::vec(any::<i32>(), 0..6),
        proptest::collection::vec(hostile_f32(), 0..6),
    )
        .prop_map(
            |((u32, u64, i32, f32, bool), str, str_arr, i32_arr, f32_arr)| Hostile {
                u32,
                u64,
                i32,
                f32,
                bool,
                str,
                str_arr,
                i32_arr,
                f32_arr,
            },
        )
}

impl Hostile {
    /// The value of type `kind` (0..9).
    fn of_kind(self, kind: usize) -> Meta {
        match kind % 9 {
            0 => Meta::U32(self.u32),
            1 => Meta::U64(self.u64),
            2 => Meta::I32(self.i32),
            3 => Meta::F32(self.f32),
            4 => Meta::Bool(self.bool),
            5 => Meta::Str(self.str),
            6 => Meta::StrArr(self.str_arr),
            7 => Meta::I32Arr(self.i32_arr),
            _ => Meta::F32Arr(self.f32_arr),
        }
    }

    /// The value of `like`'s type.
    fn like(self, like: &Meta) -> Meta {
        let kind = match like {
            Meta::U32(_) => 0,
            Meta::U64(_) => 1,
            Meta::I32(_) => 2,
            Meta::F32(_) => 3,
            Meta::Bool(_) => 4,
            Meta::Str(_) => 5,
            Meta::StrArr(_) => 6,
            Meta::I32Arr(_) => 7,
            Meta::F32Arr(_) => 8,
        };
        self.of_kind(kind)
    }
}

/// The tiny llama file, and the length of its header (everything before the tensor data).
fn tiny_file() -> (GgufBuilder, usize) {
    let (b, _) = tiny_llama();
    let bytes = b.build();
    let (_, _, tensors) = parse(Path::new(NAME), &bytes).expect("the tiny llama parses");
    let header = tensors.iter().map(|t| t.start).min().expect("tensors");
    (b, header)
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(parse_checked(&bytes).is_err());
        let mut gguf = b"GGUF\x03\0\0\0".to_vec();
        gguf.extend_from_slice(&bytes);
        let _ = parse_checked(&gguf);
    }

    #[test]
    fn hostile_headers(
        version in prop_oneof![Just(2u32), Just(3u32), any::<u32>()],
        n_tensors in hostile_u64(),
        n_kv in hostile_u64(),
        fields in proptest::collection::vec(field(), 0..24),
        pad in 0usize..256,
    ) {
        let mut bytes = encode(version, n_tensors, n_kv, &fields);
        bytes.resize(bytes.len() + pad, 0);
        let _ = parse_checked(&bytes);
    }
}

proptest! {
    // Each case converts a whole (tiny) model: fewer cases.
    #![proptest_config(cases(256))]

    #[test]
    fn mutated_files(
        muts in proptest::collection::vec(mutation(), 1..4),
        anywhere in proptest::bool::weighted(0.2),
    ) {
        let (b, header) = tiny_file();
        let mut bytes = b.build();
        let span = if anywhere { bytes.len() } else { header };
        for m in &muts {
            apply(&mut bytes, m, span);
        }
        if parse_checked(&bytes).is_ok() {
            convert_checked(&bytes);
        }
    }

    #[test]
    fn hostile_metadata(
        which in any::<Index>(),
        values in hostile_values(),
        keep_type in proptest::bool::weighted(0.75),
        kind in 0usize..9,
    ) {
        let (mut b, _) = tiny_file();
        let (key, like) = b.meta[which.index(b.meta.len())].clone();
        let value = if keep_type { values.like(&like) } else { values.of_kind(kind) };
        b.meta(&key, value);
        let bytes = b.build();
        parse_checked(&bytes).expect("the structure is intact");
        convert_checked(&bytes);
    }

    #[test]
    fn hostile_tensor_infos(
        which in any::<Index>(),
        dims in proptest::collection::vec(hostile_u64(), 0..6),
        type_id in prop_oneof![0u32..40, any::<u32>()],
        drop_data in any::<bool>(),
    ) {
        let (mut b, _) = tiny_file();
        let i = which.index(b.tensors.len());
        b.tensors[i].dims = dims;
        b.tensors[i].type_id = type_id;
        if drop_data {
            b.tensors[i].data.clear();
        }
        let bytes = b.build();
        if parse_checked(&bytes).is_ok() {
            convert_checked(&bytes);
        }
    }
}

/// Found by `hostile_metadata`: the converter listed the 9 × `llama.block_count` tensor names
/// it requires before looking for them, so a block count of 2^32 - 1 exhausted memory.
#[test]
fn huge_block_count_fails_fast() {
    for count in [u32::MAX, 1 << 20] {
        let (mut b, _) = tiny_file();
        b.meta("llama.block_count", Meta::U32(count));
        let dir = tempfile::tempdir().expect("tempdir");
        let gguf = dir.path().join(NAME);
        std::fs::write(&gguf, b.build()).expect("write");
        let (res, used) =
            measure(|| convert(&gguf, &dir.path().join("out"), &ConvertOptions::default()));
        let err = res.expect_err("layers are missing");
        assert!(
            matches!(&err, GgufError::MissingTensor { tensor, .. } if tensor == "blk.2.attn_norm.weight"),
            "{err}"
        );
        assert!(used.total < 64 << 20, "{used:?}");
    }
}

/// Head count × head dim must not wrap around.
#[test]
fn overflowing_head_dims_are_refused() {
    let (mut b, _) = tiny_file();
    b.meta("llama.attention.key_length", Meta::U64(u64::MAX - 1));
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join(NAME);
    std::fs::write(&gguf, b.build()).expect("write");
    let err =
        convert(&gguf, &dir.path().join("out"), &ConvertOptions::default()).expect_err("absurd");
    assert!(
        matches!(&err, GgufError::InvalidValue { key, .. } if key == "llama.attention.key_length"),
        "{err}"
    );
}
