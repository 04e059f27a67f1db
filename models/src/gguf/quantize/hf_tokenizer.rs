//! tokenizer.json / tokenizer_config.json → `tokenizer.ggml.*` metadata (byte-level BPE,
//! llama.cpp's `gpt2` tokenizer model): the inverse of `gguf/tokenizer.rs`.

use std::path::Path;

use serde_json::Value as Json;

use super::super::value::{Array, Value};
use super::super::GgufError;
use super::hf::{read_json, TYPE_CONTROL, TYPE_NORMAL, TYPE_USER_DEFINED};

/// `tokenizer.ggml.*` from tokenizer.json (byte-level BPE only), tokenizer_config.json and
/// config.json; `n_vocab` (the embedding rows) tokens, unused ids filled with `[PAD{id}]`
/// as convert_hf_to_gguf.py does, since llama.cpp wants one token per embedding row.
pub(super) fn tokenizer_metadata(dir: &Path, n_vocab: usize) -> Result<Vec<(String, Value)>, GgufError> {
    let path = dir.join("tokenizer.json");
    let json = read_json(&path)?;
    let fail = |msg: String| GgufError::Tokenizer {
        path: path.clone(),
        msg,
    };
    let model = json.get("model").cloned().unwrap_or(Json::Null);
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("?");
    if kind != "BPE" || model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(fail(format!(
            "only byte-level BPE tokenizers can be written to GGUF (model type `{kind}`{})",
            if kind == "BPE" {
                ", byte_fallback: SentencePiece-style"
            } else {
                ""
            }
        )));
    }
    let pre = pre_tokenizer_name(json.get("pre_tokenizer")).ok_or_else(|| {
        fail("unsupported pre_tokenizer (supported: GPT-2 ByteLevel, SmolLM digits + ByteLevel, Llama 3 and Qwen2 regex splits)".into())
    })?;

    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![TYPE_USER_DEFINED; n_vocab];
    let mut set = |id: Option<u64>, tok: &str, ty: i32| -> Result<(), GgufError> {
        let slot = id
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < n_vocab)
            .ok_or_else(|| {
                fail(format!(
                    "token {tok:?} has id {id:?}, outside the {n_vocab} embedding rows"
                ))
            })?;
        tokens[slot] = Some(tok.to_string());
        types[slot] = ty;
        Ok(())
    };
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| fail("model.vocab is not an object".into()))?;
    for (tok, id) in vocab {
        set(id.as_u64(), tok, TYPE_NORMAL)?;
    }
    for a in json
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let tok = a.get("content").and_then(Json::as_str).unwrap_or("");
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        set(
            a.get("id").and_then(Json::as_u64),
            tok,
            if special {
                TYPE_CONTROL
            } else {
                TYPE_USER_DEFINED
            },
        )?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let mut merges = Vec::new();
    for m in model
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let pair = match (m.as_str(), m.as_array().map(Vec::as_slice)) {
            (Some(s), _) => Some(s.to_string()),
            (_, Some([a, b])) => a.as_str().zip(b.as_str()).map(|(a, b)| format!("{a} {b}")),
            _ => None,
        };
        merges.push(pair.ok_or_else(|| fail(format!("invalid merge {m}")))?);
    }

    let mut ids = std::collections::HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        ids.entry(t.as_str()).or_insert(i as u32);
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    let config = read_json(&dir.join("config.json"))?;
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(Array::Str(tokens.clone())),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(Array::Str(merges)),
        ),
    ];
    // As gguf-py's SpecialVocab: tokenizer_config.json's token strings first, then
    // config.json's ids.
    for (typ, key) in [
        ("bos", "bos"),
        ("eos", "eos"),
        ("unk", "unknown"),
        ("pad", "padding"),
    ] {
        let by_name = tc.get(format!("{typ}_token")).and_then(|t| match t {
            Json::Object(o) => o.get("content").and_then(Json::as_str),
            t => t.as_str(),
        });
        let by_id = config.get(format!("{typ}_token_id")).and_then(|v| match v {
            Json::Array(a) => a.first().and_then(Json::as_u64),
            v => v.as_u64(),
        });
        let id = by_name
            .and_then(|n| ids.get(n).copied())
            .or_else(|| by_id.and_then(|i| u32::try_from(i).ok()));
        if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
            meta.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = tc.get(key).and_then(Json::as_bool) {
            meta.push((format!("tokenizer.ggml.{key}"), Value::Bool(b)));
        }
    }
    let template = match tc.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        // A list of named templates: the default one.
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template")?.as_str().map(String::from)),
        _ => None,
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".to_string(), Value::Str(t)));
    }
    Ok(meta)
}

/// llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer (the structures
/// `flint convert` writes for them, and the original checkpoints use).
fn pre_tokenizer_name(pre: Option<&Json>) -> Option<&'static str> {
    fn ty(v: &Json) -> &str {
        v.get("type").and_then(Json::as_str).unwrap_or("")
    }
    let regex = |v: &Json| v.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
    let pre = pre?;
    let items: Vec<&Json> = match ty(pre) {
        "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    match items[..] {
        [b] if ty(b) == "ByteLevel" && regex(b) => Some("gpt-2"),
        [d, b] if ty(d) == "Digits" && ty(b) == "ByteLevel" && regex(b) => {
            (d.get("individual_digits").and_then(Json::as_bool) == Some(true))
                .then_some("smollm")
        }
        [s, b] if ty(s) == "Split" && ty(b) == "ByteLevel" && !regex(b) => {
            let re = s.get("pattern")?.get("Regex")?.as_str()?;
            if re.contains(r"\p{N}{1,3}") {
                Some("llama-bpe")
            } else if re.contains(r"\p{N}|") {
                Some("qwen2")
            } else {
                None
            }
        }
        _ => None,
    }
}
