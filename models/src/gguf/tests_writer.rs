//! Tests of the GGUF writer and of `quantize` (GGUF → GGUF and Hugging Face dir → GGUF), on
//! the synthetic files of `test_writer`, read back with our reader and `convert`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::reader::GgufFile;
use super::test_writer::{tensor, tiny_llama, GgufBuilder, Meta};
use super::value::{Array, Value};
use super::writer::{ordered_metadata, GgufWriter, TensorSpec};
use super::*;

fn write_tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, tiny_llama().0.build()).unwrap();
    p
}

fn qopts(qtype: QuantType) -> QuantizeOptions {
    QuantizeOptions {
        qtype,
        progress: false,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn load_st(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every metadata key of `a` except `skip` has the same value in `b`.
fn same_metadata(a: &Path, b: &Path, skip: &[&str]) {
    let (ma, mb) = (ordered_metadata(a).unwrap(), ordered_metadata(b).unwrap());
    let keys = |m: &[(String, Value)]| -> Vec<String> {
        m.iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !skip.contains(&k.as_str()))
            .collect()
    };
    assert_eq!(keys(&ma), keys(&mb), "same keys in the same order");
    let gb = GgufFile::open(b).unwrap();
    for (k, v) in &ma {
        if !skip.contains(&k.as_str()) {
            assert_eq!(gb.get(k), Some(v), "{k}");
        }
    }
}

#[test]
fn writer_round_trips_through_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rt.gguf");
    let meta: Vec<(String, Value)> = vec![
        ("general.alignment".into(), Value::U32(64)),
        ("a.u8".into(), Value::U8(200)),
        ("a.i8".into(), Value::I8(-5)),
        ("a.u16".into(), Value::U16(60000)),
        ("a.i16".into(), Value::I16(-30000)),
        ("a.u32".into(), Value::U32(4_000_000_000)),
        ("a.i32".into(), Value::I32(-2_000_000_000)),
        ("a.f32".into(), Value::F32(1e-5)),
        ("a.bool".into(), Value::Bool(true)),
        ("a.str".into(), Value::Str("héllo".into())),
        ("a.u64".into(), Value::U64(u64::MAX)),
        ("a.i64".into(), Value::I64(i64::MIN)),
        ("a.f64".into(), Value::F64(std::f64::consts::PI)),
        (
            "a.strs".into(),
            Value::Array(Array::Str(vec!["x".into(), "".into(), "Ġy z".into()])),
        ),
        ("a.i32s".into(), Value::Array(Array::I32(vec![1, -2, 3]))),
        ("a.u32s".into(), Value::Array(Array::U32(vec![7, 8]))),
        ("a.f32s".into(), Value::Array(Array::F32(vec![0.5, -1.25]))),
        (
            "a.bools".into(),
            Value::Array(Array::Bool(vec![true, false])),
        ),
        ("a.u8s".into(), Value::Array(Array::U8(vec![]))),
        ("a.f64s".into(), Value::Array(Array::F64(vec![1.5]))),
        ("a.i64s".into(), Value::Array(Array::I64(vec![-1]))),
        (
            "a.nested".into(),
            Value::Array(Array::Nested(vec![
                Array::I16(vec![1, 2]),
                Array::Str(vec!["n".into()]),
            ])),
        ),
    ];
    let t1 = tensor(&[3, 64], 1);
    let q = candle_core::quantized::QTensor::quantize(&t1, GgmlDType::Q8_0).unwrap();
    let q_bytes = q.data().unwrap().into_owned();
    let f_bytes: Vec<u8> = (0..5u8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let specs = vec![
        TensorSpec {
            name: "w".into(),
            dims: vec![64, 3],
            dtype: GgmlDType::Q8_0,
        },
        TensorSpec {
            name: "norm".into(),
            dims: vec![5],
            dtype: GgmlDType::F32,
        },
    ];
    let mut w = GgufWriter::create(&out, &meta, specs).unwrap();
    assert_eq!(
        entries(dir.path()).len(),
        1,
        "only the temporary file so far"
    );
    assert!(!out.exists());
    w.write_tensor("w", &q_bytes).unwrap();
    w.write_tensor("norm", &f_bytes).unwrap();
    let size = w.finish().unwrap();
    assert_eq!(entries(dir.path()), vec!["rt.gguf".to_string()]);
    assert_eq!(size, std::fs::metadata(&out).unwrap().len());
    assert_eq!(size % 64, 0, "padded to the alignment");

    let g = GgufFile::open(&out).unwrap();
    for (k, v) in &meta {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    assert_eq!(ordered_metadata(&out).unwrap(), meta, "order kept");
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.tensors[0].name, "w");
    assert_eq!(g.tensors[0].dims, vec![64, 3]);
    assert_eq!(g.tensors[0].dtype, GgmlDType::Q8_0);
    assert_eq!(g.tensor_data(&g.tensors[0]).unwrap(), &q_bytes[..]);
    assert_eq!(g.tensors[1].start % 64, 0);
    assert_eq!(g.tensor_data(&g.tensors[1]).unwrap(), &f_bytes[..]);
}

#[test]
fn writer_checks_order_and_sizes_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let spec = |name: &str| TensorSpec {
        name: name.into(),
        dims: vec![32, 2],
        dtype: GgmlDType::Q4_0,
    };
    let bad_dims = TensorSpec {
        dims: vec![48, 2],
        ..spec("odd")
    };
    let err = GgufWriter::create(&out, &[], vec![bad_dims]).err().unwrap();
    assert!(err.to_string().contains("odd"), "{err}");
    let err = GgufWriter::create(&out, &[], vec![spec("a"), spec("a")])
        .err()
        .unwrap();
    assert!(err.to_string().contains("duplicate"), "{err}");
    let align = [("general.alignment".to_string(), Value::U32(48))];
    assert!(GgufWriter::create(&out, &align, vec![]).is_err());

    let mut w = GgufWriter::create(&out, &[], vec![spec("a"), spec("b")]).unwrap();
    let block = vec![0u8; 2 * 18];
    let err = w.write_tensor("b", &block).unwrap_err();
    assert!(err.to_string().contains("expected `a`"), "{err}");
    let err = w.write_tensor("a", &block[..10]).unwrap_err();
    assert!(err.to_string().contains("10 bytes"), "{err}");
    w.write_tensor("a", &block).unwrap();
    let err = w.finish().unwrap_err();
    assert!(err.to_string().contains("`b`"), "{err}");
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

    let w = GgufWriter::create(&out, &[], vec![spec("a")]).unwrap();
    drop(w);
    assert!(
        entries(dir.path()).is_empty(),
        "a dropped writer leaves nothing"
    );
}

/// GGUF → GGUF at `qtype`, then `convert` of the result: every HF tensor within `tol` of
/// what `convert` gives for the original.
fn requantize_and_compare(
    qtype: QuantType,
    tol: f32,
) -> (QuantizeReport, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let src = write_tiny(dir.path());
    let out = dir.path().join(format!("tiny.{qtype}.gguf"));
    let report = quantize(&src, &out, &qopts(qtype)).unwrap();
    assert_eq!(report.out, out);
    assert_eq!(report.bytes_written, std::fs::metadata(&out).unwrap().len());
    same_metadata(
        &src,
        &out,
        &["general.file_type", "general.quantization_version"],
    );
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(
        g.get("general.file_type"),
        Some(&Value::U32(qtype.llama_ftype()))
    );
    assert_eq!(g.get("general.quantization_version"), Some(&Value::U32(2)));
    let orig = GgufFile::open(&src).unwrap();
    let names = |g: &GgufFile| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&g), names(&orig), "same tensors in the same order");
    assert_eq!(report.tensors, g.tensors.len());

    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    convert(&src, &a, &ConvertOptions::default()).unwrap();
    convert(&out, &b, &ConvertOptions::default()).unwrap();
    let (sa, sb) = (load_st(&a), load_st(&b));
    assert_eq!(sa.len(), sb.len());
    for (name, want) in &sa {
        let d = max_abs_diff(&sb[name], want);
        assert!(d <= tol, "{qtype}: {name} differs by {d} (tolerance {tol})");
    }
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(read_json(&a.join(f)), read_json(&b.join(f)), "{f}");
    }
    (report, out, dir)
}

#[test]
fn requantizes_tiny_llama_to_q8_0() {
    let (report, out, _dir) = requantize_and_compare(QuantType::Q8_0, 0.01);
    let g = GgufFile::open(&out).unwrap();
    for t in &g.tensors {
        let want = if t.dims.len() == 1 {
            GgmlDType::F32
        } else {
            GgmlDType::Q8_0
        };
        assert_eq!(t.dtype, want, "{}", t.name);
    }
    // 2 layers × 7 matrices + the embedding; 2 × 2 norms + the output norm.
    assert_eq!(
        report.per_type,
        vec![(GgmlDType::Q8_0, 15), (GgmlDType::F32, 5)]
    );
    assert_eq!(report.type_counts(), "q8_0: 15, f32: 5");
}

#[test]
fn requantizes_tiny_llama_to_q4_0_and_f16() {
    let (report, _, _dir) = requantize_and_compare(QuantType::Q4_0, 0.15);
    assert_eq!(report.per_type[0], (GgmlDType::Q4_0, 15));
    let (report, _, _dir) = requantize_and_compare(QuantType::F16, 0.005);
    assert_eq!(report.per_type[0], (GgmlDType::F16, 15));
}

#[test]
fn k_quant_fallback_for_rows_not_a_multiple_of_256() {
    // The tiny model's rows are 64 and 96 long: q4_k cannot hold them, q5_0 (32) can.
    let (report, out, _dir) = requantize_and_compare(QuantType::Q4K, 0.1);
    assert_eq!(
        report.per_type,
        vec![(GgmlDType::Q5_0, 15), (GgmlDType::F32, 5)]
    );
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(15)));

    let cases = [
        (QuantType::Q4K, vec![256, 8], GgmlDType::Q4K),
        (QuantType::Q4K, vec![96, 8], GgmlDType::Q5_0),
        (QuantType::Q4K, vec![48, 8], GgmlDType::F16),
        (QuantType::Q2K, vec![64, 8], GgmlDType::Q4_0),
        (QuantType::Q3K, vec![64, 8], GgmlDType::Q4_0),
        (QuantType::Q5K, vec![64, 8], GgmlDType::Q5_1),
        (QuantType::Q6K, vec![64, 8], GgmlDType::Q8_0),
        (QuantType::Q6K, vec![512, 8], GgmlDType::Q6K),
        (QuantType::Q8_0, vec![40, 8], GgmlDType::F16),
        (QuantType::BF16, vec![40, 8], GgmlDType::BF16),
        (QuantType::Q4K, vec![256], GgmlDType::F32),
    ];
    for (q, dims, want) in cases {
        assert_eq!(
            q.tensor_dtype("blk.0.attn_q.weight", &dims),
            want,
            "{q} {dims:?}"
        );
    }
    assert_eq!(
        QuantType::Q4_0.tensor_dtype("rope_freqs.weight", &[64, 2]),
        GgmlDType::F32
    );
}

/// A llama whose rows are 256 long, so that k-quants apply without fallback.
fn wide_llama() -> GgufBuilder {
    let (mut b, _) = tiny_llama();
    let vocab = super::test_writer::tiny_vocab().0.len();
    let (hidden, ffn, heads, kv, head_dim) = (256usize, 512usize, 4usize, 2usize, 64usize);
    b.meta("llama.embedding_length", Meta::U32(hidden as u32))
        .meta("llama.feed_forward_length", Meta::U32(ffn as u32))
        .meta("llama.rope.dimension_count", Meta::U32(head_dim as u32));
    b.tensors.clear();
    let mut seed = 100;
    let mut add = |b: &mut GgufBuilder, name: &str, shape: &[usize]| {
        seed += 1;
        b.tensor(name, &tensor(shape, seed), GgmlDType::F32);
    };
    add(&mut b, "token_embd.weight", &[vocab, hidden]);
    add(&mut b, "output_norm.weight", &[hidden]);
    for l in 0..2 {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        add(&mut b, &n("attn_norm"), &[hidden]);
        add(&mut b, &n("attn_q"), &[heads * head_dim, hidden]);
        add(&mut b, &n("attn_k"), &[kv * head_dim, hidden]);
        add(&mut b, &n("attn_v"), &[kv * head_dim, hidden]);
        add(&mut b, &n("attn_output"), &[hidden, heads * head_dim]);
        add(&mut b, &n("ffn_norm"), &[hidden]);
        add(&mut b, &n("ffn_gate"), &[ffn, hidden]);
        add(&mut b, &n("ffn_up"), &[ffn, hidden]);
        add(&mut b, &n("ffn_down"), &[hidden, ffn]);
    }
    b
}

#[test]
fn k_quants_round_trip_within_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("wide.gguf");
    std::fs::write(&src, wide_llama().build()).unwrap();
    let a = dir.path().join("a");
    convert(&src, &a, &ConvertOptions::default()).unwrap();
    let sa = load_st(&a);
    // Values are uniform in [-1, 1): the largest error seen for each type, with ~15% margin
    // (2 bits per weight gives up to a third of the range).
    for (q, tol) in [
        (QuantType::Q2K, 0.55),
        (QuantType::Q3K, 0.32),
        (QuantType::Q4K, 0.12),
        (QuantType::Q5K, 0.065),
        (QuantType::Q6K, 0.04),
        (QuantType::Q4_1, 0.08),
        (QuantType::Q5_0, 0.07),
        (QuantType::Q5_1, 0.04),
        (QuantType::BF16, 0.004),
    ] {
        let out = dir.path().join(format!("wide.{q}.gguf"));
        let report = quantize(&src, &out, &qopts(q)).unwrap();
        assert_eq!(report.per_type[0], (q.ggml_dtype(), 15), "{q}");
        let b = dir.path().join(format!("b.{q}"));
        convert(&out, &b, &ConvertOptions::default()).unwrap();
        let sb = load_st(&b);
        for (name, want) in &sa {
            let d = max_abs_diff(&sb[name], want);
            assert!(d <= tol, "{q}: {name} differs by {d}");
        }
    }
}

#[test]
fn hf_dir_to_gguf_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_tiny(dir.path());
    let hf = dir.path().join("hf");
    convert(&src, &hf, &ConvertOptions::default()).unwrap();

    // F32: exact, in both directions.
    let out = dir.path().join("from_hf.gguf");
    let report = quantize(&hf, &out, &qopts(QuantType::F32)).unwrap();
    assert_eq!(report.per_type, vec![(GgmlDType::F32, 20)]);
    let (g, orig) = (GgufFile::open(&out).unwrap(), GgufFile::open(&src).unwrap());
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(0)));
    // The metadata llama.cpp reads is the original's.
    for key in [
        "general.architecture",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.dimension_count",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        assert_eq!(g.get(key), orig.get(key), "{key}");
    }
    // Same tensors with the same bytes in GGUF layout: the permutation is llama.cpp's.
    let mut names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut want: Vec<&str> = orig.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    for t in &g.tensors {
        let o = orig.tensors.iter().find(|o| o.name == t.name).unwrap();
        assert_eq!(t.dims, o.dims, "{}", t.name);
        let (x, y) = (
            super::convert::dequantize(&g, t).unwrap(),
            super::convert::dequantize(&orig, o).unwrap(),
        );
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{}", t.name);
    }
    let back = dir.path().join("back");
    convert(&out, &back, &ConvertOptions::default()).unwrap();
    let (sa, sb) = (load_st(&hf), load_st(&back));
    assert_eq!(sa.len(), sb.len());
    for (name, t) in &sa {
        assert_eq!(max_abs_diff(t, &sb[name]), 0.0, "{name}");
    }
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(read_json(&hf.join(f)), read_json(&back.join(f)), "{f}");
    }

    // Q8_0 from the HF directory: within the quantization error.
    let q8 = dir.path().join("from_hf.q8_0.gguf");
    quantize(&hf, &q8, &qopts(QuantType::Q8_0)).unwrap();
    let back8 = dir.path().join("back8");
    convert(&q8, &back8, &ConvertOptions::default()).unwrap();
    let s8 = load_st(&back8);
    for (name, t) in &sa {
        assert!(max_abs_diff(t, &s8[name]) < 0.01, "{name}");
    }
}

#[test]
fn hf_dir_llama3_rope_scaling_and_untied_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_tiny(dir.path());
    let hf = dir.path().join("hf");
    convert(&src, &hf, &ConvertOptions::default()).unwrap();
    let mut cfg = read_json(&hf.join("config.json"));
    cfg["rope_theta"] = serde_json::json!(500000.0);
    cfg["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    cfg["tie_word_embeddings"] = serde_json::json!(false);
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    let mut st = load_st(&hf);
    let emb = st["model.embed_tokens.weight"].clone();
    st.insert("lm_head.weight".into(), (emb * 0.5).unwrap());
    candle_core::safetensors::save(&st, hf.join("model.safetensors")).unwrap();

    let out = dir.path().join("l3.gguf");
    quantize(&hf, &out, &qopts(QuantType::Q8_0)).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let rf = g
        .tensors
        .iter()
        .find(|t| t.name == "rope_freqs.weight")
        .unwrap();
    assert_eq!((rf.dtype, rf.dims.clone()), (GgmlDType::F32, vec![8]));
    assert!(g.tensors.iter().any(|t| t.name == "output.weight"));
    let back = dir.path().join("back");
    convert(&out, &back, &ConvertOptions::default()).unwrap();
    let c = read_json(&back.join("config.json"));
    assert_eq!(c["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(c["rope_scaling"]["factor"], 8.0);
    assert_eq!(c["rope_scaling"]["original_max_position_embeddings"], 8192);
    assert_eq!(c["tie_word_embeddings"], false);
    assert!(load_st(&back).contains_key("lm_head.weight"));
}

#[test]
fn hf_dir_errors_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_tiny(dir.path());
    let hf = dir.path().join("hf");
    convert(&src, &hf, &ConvertOptions::default()).unwrap();
    let out = dir.path().join("o.gguf");
    let mut st = load_st(&hf);
    let q = st.remove("model.layers.1.self_attn.q_proj.weight").unwrap();
    st.insert("model.layers.1.self_attn.q_norm.weight".into(), q);
    candle_core::safetensors::save(&st, hf.join("model.safetensors")).unwrap();
    let err = quantize(&hf, &out, &qopts(QuantType::Q8_0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("q_proj"),
        "{err}"
    );

    std::fs::write(hf.join("config.json"), r#"{"model_type": "mistral"}"#).unwrap();
    let err = quantize(&hf, &out, &qopts(QuantType::Q8_0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("mistral"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn quant_type_parses_and_lists_the_accepted_names() {
    for q in QuantType::all() {
        assert_eq!(q.as_str().parse::<QuantType>(), Ok(q));
        assert_eq!(q.to_string().to_uppercase().parse::<QuantType>(), Ok(q));
    }
    assert_eq!("Q4_K_M".parse::<QuantType>(), Ok(QuantType::Q4K));
    assert_eq!("q5_k_s".parse::<QuantType>(), Ok(QuantType::Q5K));
    let err = "q9_9".parse::<QuantType>().unwrap_err().to_string();
    assert!(err.contains("\"q9_9\""), "{err}");
    for name in ["f32", "bf16", "q4_0", "q8_0", "q2_k", "q4_k_m", "q6_k"] {
        assert!(err.contains(name), "{err}");
    }
    assert_eq!(QuantType::Q4_0.ggml_dtype(), GgmlDType::Q4_0);
    assert_eq!(QuantType::BF16.llama_ftype(), 32);
    assert_eq!(QuantType::Q6K.llama_ftype(), 18);
}

#[test]
fn bad_inputs_name_the_file_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let missing = dir.path().join("missing.gguf");
    let err = quantize(&missing, &out, &qopts(QuantType::Q8_0)).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, vec![7u8; 100]).unwrap();
    let err = quantize(&garbage, &out, &qopts(QuantType::Q8_0)).unwrap_err();
    assert!(err.to_string().contains("garbage.gguf"), "{err}");

    let src = write_tiny(dir.path());
    let nowhere = dir.path().join("no/such/dir/out.gguf");
    let err = quantize(&src, &nowhere, &qopts(QuantType::Q8_0)).unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");

    let mut b = tiny_llama().0;
    b.remove_tensor("blk.1.ffn_up.weight");
    let partial = dir.path().join("partial.gguf");
    std::fs::write(&partial, b.build()).unwrap();
    let err = quantize(&partial, &out, &qopts(QuantType::Q8_0)).unwrap_err();
    assert!(err.to_string().contains("blk.1.ffn_up.weight"), "{err}");
    assert_eq!(
        entries(dir.path()),
        vec!["garbage.gguf", "partial.gguf", "tiny.gguf"],
        "no output and no temporary file"
    );
}

#[test]
fn hf_dir_with_sharded_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_tiny(dir.path());
    let hf = dir.path().join("hf");
    convert(&src, &hf, &ConvertOptions::default()).unwrap();
    let st = load_st(&hf);
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (name, t) in &st {
        let (shard, file) = if name.contains("layers.1") {
            (&mut b, "model-00002-of-00002.safetensors")
        } else {
            (&mut a, "model-00001-of-00002.safetensors")
        };
        shard.insert(name.clone(), t.clone());
        map.insert(name.clone(), serde_json::json!(file));
    }
    candle_core::safetensors::save(&a, hf.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, hf.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(hf.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let out = dir.path().join("sharded.gguf");
    let report = quantize(&hf, &out, &qopts(QuantType::F32)).unwrap();
    assert_eq!(report.tensors, st.len());
    let back = dir.path().join("back");
    convert(&out, &back, &ConvertOptions::default()).unwrap();
    let sb = load_st(&back);
    for (name, t) in &st {
        assert_eq!(max_abs_diff(t, &sb[name]), 0.0, "{name}");
    }
}
