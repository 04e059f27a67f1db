//! Robustness tests: every supported GGML type, truncated and hostile files, wrong models.

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::reader::GgufFile;
use super::test_writer::*;
use super::tests::{leftovers, max_abs_diff, opts, write_file};
use super::*;

#[test]
fn dequantizes_every_supported_type() {
    use GgmlDType::*;
    let mut b = GgufBuilder::new();
    b.alignment = 1; // misaligned tensor data must be handled too
    b.meta("general.alignment", Meta::U32(1));
    let src = tensor(&[4, 512], 7);
    let mut want = Vec::new();
    for (i, dt) in [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("t{i}");
        // candle cannot quantize to Q8_1 on the CPU; store its raw blocks by hand.
        let back = if dt == Q8_1 {
            let mut data = Vec::new();
            for blk in 0..(4 * 512 / 32) {
                data.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
                data.extend_from_slice(&half::f16::from_f32(0.0).to_le_bytes());
                data.extend((0..32).map(|j| ((blk + j) % 100) as u8));
            }
            b.tensors.push(RawTensor {
                name: name.clone(),
                dims: vec![512, 4],
                type_id: 9,
                data,
            });
            let vals: Vec<f32> = (0..4 * 512 / 32)
                .flat_map(|blk| (0..32).map(move |j| ((blk + j) % 100) as f32 * 0.5))
                .collect();
            Tensor::from_vec(vals, (4, 512), &Device::Cpu).unwrap()
        } else {
            b.tensor(&name, &src, dt)
        };
        want.push((name, dt, back));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "types.gguf", &b.build());
    let g = GgufFile::open(&path).unwrap();
    for (name, dt, back) in want {
        let info = g.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(info.dtype, dt);
        let got = convert::dequantize(&g, info).unwrap();
        assert_eq!(got.dims(), &[4, 512]);
        assert_eq!(max_abs_diff(&got, &back), 0.0, "{dt:?}");
    }
}

#[test]
fn truncated_file_errors_and_writes_nothing() {
    let (b, _) = tiny_llama();
    let bytes = b.build();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cuts: Vec<usize> = (0..4096.min(bytes.len())).collect();
    cuts.extend((4096..bytes.len()).step_by(997));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        let gguf = write_file(dir.path(), "cut.gguf", &bytes[..cut]);
        let err = convert(&gguf, &out, &opts()).expect_err(&format!("cut at {cut} must fail"));
        assert!(err.to_string().contains("cut.gguf"), "{err}");
        assert_eq!(
            leftovers(dir.path(), &gguf),
            Vec::<PathBuf>::new(),
            "cut at {cut}"
        );
    }
}

/// A header followed by raw bytes; `n_tensors`/`n_kv` are written as given.
fn raw_header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&n_tensors.to_le_bytes());
    v.extend_from_slice(&n_kv.to_le_bytes());
    v.extend_from_slice(rest);
    v.resize(v.len().max(64), 0);
    v
}

fn kv(key: &str, ty: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_str(&mut v, key);
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn open_err(bytes: &[u8]) -> GgufError {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bad.gguf", bytes);
    let err = GgufFile::open(&path).err().expect("must fail");
    assert!(
        err.to_string().contains("bad.gguf"),
        "message names the file: {err}"
    );
    err
}

#[test]
fn absurd_counts_and_lengths_are_rejected() {
    let huge = u64::MAX.to_le_bytes();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("tensor count", raw_header(u64::MAX, 0, &[])),
        ("key/value count", raw_header(0, 1 << 60, &[])),
        ("metadata key: length", raw_header(0, 1, &huge)),
        ("string value", raw_header(0, 1, &kv("k", 8, &huge))),
        (
            "array length",
            raw_header(
                0,
                1,
                &kv(
                    "k",
                    9,
                    &[4u32.to_le_bytes().as_slice(), &(1u64 << 62).to_le_bytes()].concat(),
                ),
            ),
        ),
        (
            "array length",
            raw_header(
                0,
                1,
                &kv("k", 9, &[8u32.to_le_bytes().as_slice(), &huge].concat()),
            ),
        ),
        (
            "unknown metadata value type",
            raw_header(0, 1, &kv("k", 77, &[])),
        ),
        ("invalid bool", raw_header(0, 1, &kv("k", 7, &[5]))),
        (
            "power of two",
            raw_header(0, 1, &kv("general.alignment", 4, &3u32.to_le_bytes())),
        ),
        (
            "power of two",
            raw_header(0, 1, &kv("general.alignment", 4, &0u32.to_le_bytes())),
        ),
    ];
    // Arrays nested far deeper than any real file.
    let mut nested = Vec::new();
    for _ in 0..100 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    cases.push(("nested deeper", raw_header(0, 1, &kv("k", 9, &nested))));
    // Tensor infos: element count overflow, data past the end, unsupported type, too many dims.
    let info = |dims: &[u64], ty: u32, off: u64| {
        let mut v = Vec::new();
        put_str(&mut v, "w");
        v.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter()
            .for_each(|d| v.extend_from_slice(&d.to_le_bytes()));
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&off.to_le_bytes());
        v
    };
    cases.push((
        "overflows",
        raw_header(1, 0, &info(&[1 << 32, 1 << 32, 1 << 32], 0, 0)),
    ));
    cases.push((
        "beyond the end",
        raw_header(1, 0, &info(&[1 << 20, 1 << 20], 0, 0)),
    ));
    cases.push((
        "beyond the end",
        raw_header(1, 0, &info(&[32], 0, u64::MAX - 31)),
    ));
    cases.push(("IQ2_XXS", raw_header(1, 0, &info(&[256], 16, 0))));
    cases.push(("unknown", raw_header(1, 0, &info(&[256], 1000, 0))));
    cases.push((
        "dimensions",
        raw_header(1, 0, &info(&[1, 1, 1, 1, 1], 0, 0)),
    ));
    cases.push(("block size", raw_header(1, 0, &info(&[17], 8, 0))));
    cases.push(("alignment", raw_header(1, 0, &info(&[1], 0, 3))));
    for (want, bytes) in cases {
        let msg = open_err(&bytes).to_string();
        assert!(msg.contains(want), "expected {want:?} in {msg:?}");
    }
    assert!(matches!(
        open_err(b"GGML\x03\0\0\0aaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        GgufError::BadMagic { .. }
    ));
    let mut v1 = raw_header(0, 0, &[]);
    v1[4] = 1;
    assert!(matches!(
        open_err(&v1),
        GgufError::UnsupportedVersion { version: 1, .. }
    ));
    assert!(matches!(open_err(b"GGUF"), GgufError::Malformed { .. }));
}

#[test]
fn rejects_wrong_models() {
    let check = |f: &dyn Fn(&mut GgufBuilder), want: &str| {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = tiny_llama();
        f(&mut b);
        let gguf = write_file(dir.path(), "m.gguf", &b.build());
        let out = dir.path().join("out");
        let msg = convert(&gguf, &out, &opts()).unwrap_err().to_string();
        assert!(
            msg.contains(want) && msg.contains("m.gguf"),
            "expected {want:?} in {msg:?}"
        );
        assert!(!out.exists());
    };
    check(
        &|b| {
            b.meta("general.architecture", Meta::Str("qwen2".into()));
        },
        "unsupported architecture `qwen2`",
    );
    check(
        &|b| {
            b.tensor(
                "blk.0.attn_q_norm.weight",
                &tensor(&[HIDDEN], 3),
                GgmlDType::F32,
            );
        },
        "blk.0.attn_q_norm.weight",
    );
    check(
        &|b| {
            b.tensor(
                "blk.7.attn_norm.weight",
                &tensor(&[HIDDEN], 3),
                GgmlDType::F32,
            );
        },
        "beyond llama.block_count",
    );
    check(
        &|b| b.remove_tensor("blk.1.ffn_up.weight"),
        "blk.1.ffn_up.weight` is missing",
    );
    check(
        &|b| {
            b.meta("llama.attention.head_count_kv", Meta::U32(3));
        },
        "head_count_kv",
    );
    check(
        &|b| {
            b.meta("llama.feed_forward_length", Meta::U32(128));
        },
        "blk.0.ffn_gate.weight",
    );
    check(
        &|b| {
            b.meta("tokenizer.ggml.model", Meta::Str("bert".into()));
        },
        "unsupported tokenizer model `bert`",
    );
    check(
        &|b| {
            b.meta("llama.block_count", Meta::Str("two".into()));
        },
        "llama.block_count",
    );
}
