//! Property tests of the loaders that read files a user (or an API caller, for LoRA adapters)
//! hands to flint: safetensors headers ([`crate::loader`]), PEFT `adapter_config.json`
//! ([`crate::lora`]) and `config.json` ([`crate::config`]). Whatever the input: no panic, no
//! allocation beyond a small multiple of the input, and an error naming the file and, for a
//! bad value, the field.
//!
//! Inputs are the committed tiny fixtures with hostile values put in, plus arbitrary JSON.
//! Case counts are bounded so this file runs in a few seconds in release mode.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

use crate::error::ModelError;
use crate::test_support::{cases, measure};
use crate::{config::ModelConfig, lora::LoraAdapter};

fn fixtures() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).to_path_buf()
}

fn tiny_model() -> PathBuf {
    fixtures().join("tiny/llama-gqa-tied")
}

/// The fixture adapter for the tiny model: r = 8 on q, k, v and o.
fn tiny_adapter() -> PathBuf {
    fixtures().join("lora/llama-gqa-tied/attn-r8")
}

fn tiny_config() -> ModelConfig {
    ModelConfig::from_file(&tiny_model().join("config.json")).expect("the fixture config parses")
}

/// JSON leaves that break naive readers: type confusion, zero, negatives, 2^53+, huge floats.
fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(8), Just(i64::MIN), Just(i64::MAX), any::<i64>()]
            .prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(1u64 << 53), Just(1u64 << 32), any::<u64>()].prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-0.0), Just(1e308), Just(-1e308), Just(5e-324), any::<f64>()]
            .prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An object holding each of `fields` (name, plausible values) with probability 0.95, with a
/// plausible value (30 in 31) or any JSON, plus a few unknown keys.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Map<String, Value>> {
    let entries: Vec<_> = fields
        .into_iter()
        .map(|(name, good)| {
            proptest::option::weighted(0.95, prop_oneof![30 => good, 1 => json_value()]).prop_map(move |v| (name, v))
        })
        .collect();
    (entries, proptest::collection::btree_map("[a-z_]{1,8}", json_value(), 0..3))
        .prop_map(|(entries, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            for (name, v) in entries {
                match v {
                    Some(v) => m.insert(name.to_string(), v),
                    None => m.remove(name),
                };
            }
            m
        })
        .boxed()
}

fn one_of(values: Vec<Value>) -> BoxedStrategy<Value> {
    proptest::sample::select(values).boxed()
}

/// Mostly `typical`, sometimes `edge`.
fn mostly(typical: Vec<Value>, edge: Vec<Value>) -> BoxedStrategy<Value> {
    prop_oneof![9 => one_of(typical), 1 => one_of(edge)].boxed()
}

/// An unsigned size: `typical` values, or an edge case (0, 2^40, 2^64 - 1, -1, 8.0).
fn size(typical: &[u64]) -> BoxedStrategy<Value> {
    let edge = vec![json!(0), json!(1), json!(1u64 << 40), json!(u64::MAX), json!(-1), json!(8.0)];
    mostly(typical.iter().map(|&v| json!(v)).collect(), edge)
}

fn flag() -> BoxedStrategy<Value> {
    mostly(vec![json!(false)], vec![json!(true)])
}

/// Checks what every loader error must say: the file, and for a bad JSON value, where.
fn check_error(e: &ModelError, file: &Path, fields: &[&str]) {
    let msg = e.to_string();
    assert!(msg.contains(&file.display().to_string()), "error does not name {}: {msg}", file.display());
    match e {
        ModelError::InvalidConfig { field, .. } => assert!(fields.contains(field), "unexpected field `{field}`: {msg}"),
        // Broken JSON text: serde gives the line and column.
        ModelError::Json { source, .. } if source.is_syntax() || source.is_eof() => {}
        ModelError::Json { field, .. } if field.is_empty() => {
            // At the top level serde names the field itself ("missing field `r`").
            let named = fields.iter().any(|f| msg.contains(&format!("`{f}`")));
            assert!(named || msg.contains("expected a JSON object"), "{msg}");
        }
        ModelError::Json { field, .. } => {
            let top = field.split(['.', '[']).next().unwrap_or_default();
            assert!(fields.contains(&top), "unexpected field path `{field}`: {msg}");
        }
        _ => {}
    }
}

const PEFT_FIELDS: &[&str] = &[
    "peft_type",
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "bias",
    "fan_in_fan_out",
    "use_dora",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
];

fn peft_config() -> BoxedStrategy<Map<String, Value>> {
    let modules = proptest::collection::vec(
        one_of(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", ""]
                .map(Value::from)
                .to_vec(),
        ),
        0..5,
    )
    .prop_map(Value::Array);
    object(vec![
        ("peft_type", mostly(vec![json!("LORA")], vec![json!("LOHA"), json!(null), json!("lora")])),
        ("r", size(&[8, 8, 8, 4, 16, 17])),
        (
            "lora_alpha",
            mostly(
                vec![json!(16), json!(8), json!(0.5)],
                vec![json!(0), json!(-1), json!(1e308), json!(5e-324), json!("16")],
            ),
        ),
        ("use_rslora", any::<bool>().prop_map(Value::from).boxed()),
        (
            "target_modules",
            prop_oneof![
                3 => Just(json!(["q_proj", "k_proj", "v_proj", "o_proj"])),
                3 => modules,
                1 => one_of(vec![json!("all-linear"), json!("q_proj"), json!(".*")]),
            ]
            .boxed(),
        ),
        ("bias", mostly(vec![json!("none")], vec![json!("all"), json!(null)])),
        ("fan_in_fan_out", flag()),
        ("use_dora", flag()),
        ("modules_to_save", mostly(vec![json!(null), json!([])], vec![json!(["lm_head"])])),
        ("rank_pattern", mostly(vec![json!({}), json!(null)], vec![json!({"q_proj": 4})])),
        ("alpha_pattern", mostly(vec![json!({}), json!(null)], vec![json!({"q_proj": 4})])),
        ("layers_to_transform", mostly(vec![json!(null)], vec![json!([0]), json!(0)])),
    ])
}

const CONFIG_FIELDS: &[&str] = &[
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
    "attention_bias",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "sliding_window",
    "use_sliding_window",
];

fn model_config() -> BoxedStrategy<Map<String, Value>> {
    let arch = one_of(
        ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM", "GPT2"]
            .map(Value::from)
            .to_vec(),
    );
    let scaling = one_of(vec![
        json!(null),
        json!({"rope_type": "linear", "factor": 2.0}),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        json!({"rope_type": "llama3", "factor": -1, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": -5}),
        json!({"type": "yarn", "factor": 4.0}),
        json!({"factor": 2.0}),
    ]);
    object(vec![
        ("architectures", prop_oneof![4 => arch.prop_map(|a| json!([a])), 1 => Just(json!([]))].boxed()),
        ("vocab_size", size(&[256, 32000])),
        ("hidden_size", size(&[64, 48, 4096])),
        ("intermediate_size", size(&[128, 11008])),
        ("num_hidden_layers", size(&[2, 32])),
        ("num_attention_heads", size(&[4, 8, 3])),
        ("num_key_value_heads", size(&[2, 4, 1, 3])),
        ("head_dim", size(&[16, 8, 7])),
        ("max_position_embeddings", size(&[256, 131072])),
        (
            "rms_norm_eps",
            mostly(vec![json!(1e-6), json!(1e-5)], vec![json!(0), json!(-1e-6), json!(1e308), json!("1e-6")]),
        ),
        ("rope_theta", mostly(vec![json!(10000.0), json!(500000)], vec![json!(0), json!(-1), json!(1e308)])),
        ("rope_scaling", scaling),
        ("tie_word_embeddings", any::<bool>().prop_map(Value::from).boxed()),
        ("attention_bias", flag()),
        ("hidden_act", mostly(vec![json!("silu")], vec![json!("gelu")])),
        ("bos_token_id", size(&[1, 128000])),
        (
            "eos_token_id",
            prop_oneof![size(&[2, 128001]), proptest::collection::vec(size(&[2, 7]), 0..3).prop_map(Value::Array)]
                .boxed(),
        ),
        ("sliding_window", mostly(vec![json!(null)], vec![json!(4096)])),
        ("use_sliding_window", flag()),
    ])
}

/// A mutation of a safetensors file: of one header entry, of the header length, or of bytes.
#[derive(Clone, Debug)]
enum StMutation {
    /// Replace `key` of the `which`th tensor entry with `value`.
    Entry { which: Index, key: &'static str, value: Value },
    /// Keep the file valid but change what a tensor is: reverse its shape, or give it another
    /// dtype of the same width.
    Reinterpret { which: Index, dtype: Option<&'static str> },
    /// Remove the `which`th tensor entry.
    Remove(Index),
    /// Write this header length instead of the true one.
    Length(u64),
    /// Overwrite one byte of the first `header + 8` bytes.
    Byte(Index, u8),
    /// Cut the file.
    Truncate(Index),
}

fn dtype_value() -> BoxedStrategy<Value> {
    one_of(
        ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "F6_E2M3", "C64", "U64", "Q4", ""]
            .map(Value::from)
            .to_vec(),
    )
}

fn dim_value() -> BoxedStrategy<Value> {
    one_of(vec![
        json!(0),
        json!(1),
        json!(3),
        json!(64),
        json!(1u64 << 32),
        json!(u64::MAX),
        json!(usize::MAX / 2 + 1),
        json!(-1),
    ])
}

fn st_mutation() -> impl Strategy<Value = StMutation> {
    let shape = proptest::collection::vec(dim_value(), 0..5).prop_map(Value::Array);
    let offsets = proptest::collection::vec(dim_value(), 0..4).prop_map(Value::Array);
    let entry = prop_oneof![
        dtype_value().prop_map(|v| ("dtype", v)),
        shape.prop_map(|v| ("shape", v)),
        offsets.prop_map(|v| ("data_offsets", v)),
        json_value().prop_map(|v| ("dtype", v)),
    ];
    let same_width = proptest::option::of(proptest::sample::select(vec!["F32", "I32", "U32"]));
    prop_oneof![
        4 => (any::<Index>(), entry).prop_map(|(which, (key, value))| StMutation::Entry { which, key, value }),
        3 => (any::<Index>(), same_width).prop_map(|(which, dtype)| StMutation::Reinterpret { which, dtype }),
        1 => any::<Index>().prop_map(StMutation::Remove),
        1 => prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(100_000_001), Just(1 << 40), any::<u64>()].prop_map(StMutation::Length),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| StMutation::Byte(i, b)),
        1 => any::<Index>().prop_map(StMutation::Truncate),
    ]
}

/// `file` (a safetensors file) with `muts` applied.
fn mutate_safetensors(file: &Path, muts: &[StMutation]) -> Vec<u8> {
    let bytes = std::fs::read(file).expect("fixture");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header");
    let data = bytes[8 + n..].to_vec();
    let mut length = None;
    let mut raw = Vec::new();
    for m in muts {
        let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
        match m {
            StMutation::Entry { which, key, value } if !names.is_empty() => {
                if let Some(Value::Object(e)) = header.get_mut(&names[which.index(names.len())]) {
                    e.insert(key.to_string(), value.clone());
                }
            }
            StMutation::Reinterpret { which, dtype } if !names.is_empty() => {
                if let Some(Value::Object(e)) = header.get_mut(&names[which.index(names.len())]) {
                    match dtype {
                        Some(d) => {
                            e.insert("dtype".into(), json!(d));
                        }
                        None => {
                            if let Some(Value::Array(dims)) = e.get_mut("shape") {
                                dims.reverse();
                            }
                        }
                    }
                }
            }
            StMutation::Remove(which) if !names.is_empty() => {
                header.remove(&names[which.index(names.len())]);
            }
            StMutation::Length(l) => length = Some(*l),
            other => raw.push(other.clone()),
        }
    }
    let text = serde_json::to_vec(&header).expect("serialize");
    let mut out = length.unwrap_or(text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    for m in raw {
        match m {
            StMutation::Byte(i, b) => {
                let at = i.index(text.len() + 8);
                if let Some(x) = out.get_mut(at) {
                    *x = b;
                }
            }
            StMutation::Truncate(i) => out.truncate(i.index(out.len() + 1)),
            _ => {}
        }
    }
    out
}

/// A directory with the tiny model's config and `weights` as its model.safetensors.
fn model_dir_with(weights: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(tiny_model().join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(dir.path().join("model.safetensors"), weights).expect("write");
    dir
}

/// An adapter directory with these two files.
fn adapter_dir_with(config: &str, weights: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("adapter_config.json"), config).expect("write");
    std::fs::write(dir.path().join("adapter_model.safetensors"), weights).expect("write");
    dir
}

proptest! {
    #![proptest_config(cases(128))]

    /// Mutated model weights: `load` refuses them with an error naming the file, or loads a
    /// model whose tensors have the shapes its config says.
    #[test]
    fn mutated_model_weights(muts in proptest::collection::vec(st_mutation(), 1..4)) {
        let bytes = mutate_safetensors(&tiny_model().join("model.safetensors"), &muts);
        let dir = model_dir_with(&bytes);
        let weights = dir.path().join("model.safetensors");
        let (checked, used) = measure(|| crate::loader::check_safetensors(&weights));
        prop_assert!(used.total <= 16 * bytes.len() + (1 << 20), "checking {} bytes allocated {used:?}", bytes.len());
        match checked {
            Err(e) => check_error(&e, &weights, &[]),
            Ok(()) => {
                if let Err(e) = crate::load(dir.path(), &Default::default()) {
                    prop_assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");
                }
            }
        }
    }

    /// Headers that are any JSON at all (tensor entries of random shape), any claimed length,
    /// and a few data bytes, as model and as adapter weights.
    #[test]
    fn arbitrary_safetensors_headers(
        entries in proptest::collection::btree_map(
            "[a-z_.]{1,12}",
            prop_oneof![
                3 => (dtype_value(), proptest::collection::vec(dim_value(), 0..4), proptest::collection::vec(dim_value(), 0..3))
                    .prop_map(|(d, s, o)| json!({"dtype": d, "shape": s, "data_offsets": o})),
                1 => json_value(),
            ],
            0..4,
        ),
        length in proptest::option::weighted(0.2, prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]),
        data in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let text = Value::Object(entries.into_iter().collect()).to_string();
        let mut bytes = length.unwrap_or(text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&data);
        let dir = model_dir_with(&bytes);
        let weights = dir.path().join("model.safetensors");
        let (checked, used) = measure(|| crate::loader::check_safetensors(&weights));
        prop_assert!(used.total <= 16 * bytes.len() + (1 << 20), "checking {} bytes allocated {used:?}", bytes.len());
        if let Err(e) = checked {
            check_error(&e, &weights, &[]);
        }
        let config = std::fs::read_to_string(tiny_adapter().join("adapter_config.json")).expect("fixture");
        let adapter = adapter_dir_with(&config, &bytes);
        if let Err(e) = LoraAdapter::load(adapter.path(), &tiny_config(), 16) {
            check_error(&e, &adapter.path().join("adapter_model.safetensors"), &[]);
        }
    }

    /// Mutated adapter weights with the fixture's config.
    #[test]
    fn mutated_adapter_weights(muts in proptest::collection::vec(st_mutation(), 1..4)) {
        let bytes = mutate_safetensors(&tiny_adapter().join("adapter_model.safetensors"), &muts);
        let config = std::fs::read_to_string(tiny_adapter().join("adapter_config.json")).expect("fixture");
        let dir = adapter_dir_with(&config, &bytes);
        if let Err(e) = LoraAdapter::load(dir.path(), &tiny_config(), 16) {
            check_error(&e, &dir.path().join("adapter_model.safetensors"), &[]);
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Arbitrary `adapter_config.json` objects with the fixture's weights.
    #[test]
    fn peft_configs(config in peft_config()) {
        let text = Value::Object(config).to_string();
        let weights = std::fs::read(tiny_adapter().join("adapter_model.safetensors")).expect("fixture");
        let dir = adapter_dir_with(&text, &weights);
        match LoraAdapter::load(dir.path(), &tiny_config(), 16) {
            Ok(a) => prop_assert!(a.rank == 8 && a.scale.is_finite() && a.scale > 0.0, "{a:?}"),
            Err(e @ (ModelError::InvalidConfig { .. } | ModelError::Json { .. })) => {
                check_error(&e, &dir.path().join("adapter_config.json"), PEFT_FIELDS)
            }
            Err(e) => check_error(&e, dir.path(), &[]),
        }
    }

    /// Any JSON text at all as `adapter_config.json` and `config.json`.
    #[test]
    fn arbitrary_json_configs(v in json_value(), cut in any::<Index>()) {
        let text = v.to_string();
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let dir = adapter_dir_with(text, b"");
        if let Err(e) = LoraAdapter::load(dir.path(), &tiny_config(), 16) {
            check_error(&e, dir.path(), PEFT_FIELDS);
        }
        if let Err(e) = ModelConfig::from_json(text, Path::new("config.json")) {
            check_error(&e, Path::new("config.json"), CONFIG_FIELDS);
        }
    }

    /// Arbitrary `config.json` objects: refused naming the field, or a config whose derived
    /// sizes are consistent.
    #[test]
    fn model_configs(config in model_config()) {
        let text = Value::Object(config).to_string();
        match ModelConfig::from_json(&text, Path::new("config.json")) {
            Ok(c) => {
                prop_assert!(c.num_heads % c.num_kv_heads == 0 && c.head_dim % 2 == 0 && c.head_dim > 0, "{c:?}");
                // Saturates rather than wrapping around.
                let embed = (c.vocab_size as u64).saturating_mul(c.hidden_size as u64);
                prop_assert!(c.num_parameters() >= embed, "{} < {embed}", c.num_parameters());
            }
            Err(e) => check_error(&e, Path::new("config.json"), CONFIG_FIELDS),
        }
    }
}
