//! Rebuilds a Hugging Face `tokenizer.json` and `tokenizer_config.json` from GGUF metadata.
//!
//! - `tokenizer.ggml.model == "gpt2"`: byte-level BPE; vocab and merges are taken as they are,
//!   the pre-tokenizer is chosen from `tokenizer.ggml.pre` (the regexes llama.cpp uses for it).
//! - `tokenizer.ggml.model == "llama"`: SentencePiece BPE, expressed the way transformers'
//!   `LlamaConverter` does (metaspace normalizer, byte fallback); the merges are derived from
//!   the vocabulary and scores like transformers' `SentencePieceExtractor`.

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use super::reader::GgufFile;
use super::GgufError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Llama 3 pre-tokenizer regex (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 pre-tokenizer regex (llama.cpp `qwen2`): like Llama 3 but single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files and the special token ids config.json needs.
pub(crate) struct TokenizerFiles {
    pub tokenizer_json: Json,
    pub tokenizer_config: Json,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// End-of-turn token when it differs from eos (generation should stop on both).
    pub eot_id: Option<u32>,
    pub pad_id: Option<u32>,
}

struct Vocab<'a> {
    tokens: &'a [String],
    types: Vec<i64>,
    /// First id of every token string (later duplicates are left out of the model vocab).
    ids: HashMap<&'a str, u32>,
}

impl<'a> Vocab<'a> {
    fn token(&self, id: Option<u32>) -> Option<&'a str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    fn vocab_json(&self) -> Json {
        let mut map = Map::with_capacity(self.ids.len());
        for (id, tok) in self.tokens.iter().enumerate() {
            if self.ids.get(tok.as_str()) == Some(&(id as u32)) {
                map.insert(tok.clone(), json!(id));
            }
        }
        Json::Object(map)
    }
}

pub(crate) fn build(g: &GgufFile, model_max_length: usize) -> Result<TokenizerFiles, GgufError> {
    let fail = |msg: String| GgufError::Tokenizer {
        path: g.path().to_path_buf(),
        msg,
    };
    let model = g.get_str("tokenizer.ggml.model")?;
    let tokens =
        g.opt_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufError::MissingKey {
                path: g.path().to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
            })?;
    if tokens.is_empty() || tokens.len() > u32::MAX as usize {
        return Err(g.invalid("tokenizer.ggml.tokens", format!("{} tokens", tokens.len())));
    }
    let types = match g.opt_int_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t,
        Some(t) => {
            return Err(g.invalid(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", t.len(), tokens.len()),
            ))
        }
        None => vec![TYPE_NORMAL; tokens.len()],
    };
    let mut ids = HashMap::with_capacity(tokens.len());
    let mut duplicates = 0usize;
    for (id, tok) in tokens.iter().enumerate() {
        match ids.entry(tok.as_str()) {
            std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id as u32);
            }
        }
    }
    if duplicates > 0 {
        tracing::warn!(
            "{}: {duplicates} duplicated token strings; only their first id is kept",
            g.path().display()
        );
    }
    let vocab = Vocab { tokens, types, ids };

    let special_id = |key: &str| -> Result<Option<u32>, GgufError> {
        match g.opt_i64(key)? {
            Some(id) if id >= 0 && (id as u64) < tokens.len() as u64 => Ok(Some(id as u32)),
            Some(id) => {
                tracing::warn!(
                    "{}: ignoring {key} = {id}, outside the vocabulary",
                    g.path().display()
                );
                Ok(None)
            }
            None => Ok(None),
        }
    };
    let bos_id = special_id("tokenizer.ggml.bos_token_id")?;
    let eos_id = special_id("tokenizer.ggml.eos_token_id")?;
    let unk_id = special_id("tokenizer.ggml.unknown_token_id")?;
    let pad_id = special_id("tokenizer.ggml.padding_token_id")?;
    let eot_id = special_id("tokenizer.ggml.eot_token_id")?.filter(|&t| Some(t) != eos_id);

    let (spm, model_json, normalizer, pre_tokenizer, decoder) = match model {
        "gpt2" => {
            let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let (pre_tokenizer, ignore_merges) = bpe_pre_tokenizer(pre).ok_or_else(|| {
                fail(format!(
                    "unsupported tokenizer.ggml.pre `{pre}` (supported: default, gpt-2, smollm, starcoder, refact, command-r, llama-bpe, llama3, smaug-bpe, dbrx, qwen2, mpt, olmo)"
                ))
            })?;
            let merges = gpt2_merges(g, &vocab)?;
            let model = json!({
                "type": "BPE", "dropout": null, "unk_token": null, // byte-level BPE never needs one
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": vocab.vocab_json(), "merges": merges,
            });
            let decoder = json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true });
            (false, model, Json::Null, pre_tokenizer, decoder)
        }
        "llama" => {
            let add_space_prefix = g
                .opt_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            let scores = match g.opt_f32_array("tokenizer.ggml.scores")? {
                Some(s) if s.len() == tokens.len() => s.to_vec(),
                Some(s) => {
                    return Err(g.invalid(
                        "tokenizer.ggml.scores",
                        format!("{} scores for {} tokens", s.len(), tokens.len()),
                    ))
                }
                None => (0..tokens.len()).map(|i| -(i as f32)).collect(),
            };
            let unk = vocab
                .token(unk_id)
                .or_else(|| vocab.ids.contains_key("<unk>").then_some("<unk>"));
            let byte_fallback = vocab.types.contains(&TYPE_BYTE);
            let model = json!({
                "type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": byte_fallback, "ignore_merges": false,
                "vocab": vocab.vocab_json(), "merges": spm_merges(&vocab, &scores),
            });
            let replace =
                json!({ "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" });
            let normalizer = if add_space_prefix {
                json!({ "type": "Sequence", "normalizers": [{ "type": "Prepend", "prepend": "\u{2581}" }, replace] })
            } else {
                replace
            };
            let mut decoders = vec![
                json!({ "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " }),
                json!({ "type": "ByteFallback" }),
                json!({ "type": "Fuse" }),
            ];
            if add_space_prefix {
                decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
            }
            (
                true,
                model,
                normalizer,
                Json::Null,
                json!({ "type": "Sequence", "decoders": decoders }),
            )
        }
        other => {
            return Err(fail(format!(
                "unsupported tokenizer model `{other}` (supported: gpt2, llama)"
            )))
        }
    };

    // llama.cpp's defaults: SentencePiece models add BOS, BPE models do not.
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(spm) && bos_id.is_some();
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos_id.is_some();
    let post_processor = template_processing(
        &vocab,
        add_bos.then_some(bos_id).flatten(),
        add_eos.then_some(eos_id).flatten(),
    );

    let added: Vec<(usize, &String, bool)> = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, tok)| match vocab.types[id] {
            TYPE_CONTROL | TYPE_UNKNOWN => Some((id, tok, true)),
            TYPE_USER_DEFINED => Some((id, tok, false)),
            _ => None,
        })
        .collect();
    let added_json = |(id, tok, special): &(usize, &String, bool)| {
        json!({ "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special })
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.iter().map(added_json).collect::<Vec<_>>(),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "model": model_json,
        "post_processor": post_processor,
        "decoder": decoder,
    });

    let mut decoder_map = Map::new();
    for (id, tok, special) in &added {
        decoder_map.insert(
            id.to_string(),
            json!({ "content": tok, "lstrip": false, "normalized": false, "rstrip": false,
                    "single_word": false, "special": special }),
        );
    }
    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "added_tokens_decoder": decoder_map,
        "bos_token": vocab.token(bos_id),
        "eos_token": vocab.token(eos_id),
        "unk_token": vocab.token(unk_id),
        "pad_token": vocab.token(pad_id),
        "clean_up_tokenization_spaces": false,
        "model_max_length": model_max_length,
        "tokenizer_class": if spm { "LlamaTokenizerFast" } else { "PreTrainedTokenizerFast" },
    });
    if let Some(template) = g.opt_str("tokenizer.chat_template")? {
        config["chat_template"] = json!(template);
    }
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: config,
        bos_id,
        eos_id,
        eot_id,
        pad_id,
    })
}

/// The HF pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` value, and whether the BPE model
/// should look whole words up before merging (`ignore_merges`, as Llama 3 does).
fn bpe_pre_tokenizer(pre: &str) -> Option<(Json, bool)> {
    let byte_level = |use_regex: bool| json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex });
    let split = |regex: &str| json!({ "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false });
    let seq = |items: Vec<Json>| json!({ "type": "Sequence", "pretokenizers": items });
    Some(match pre {
        // GPT-2's regex, which ByteLevel applies itself. (llama.cpp's "default" BPE splitting
        // differs in details; GPT-2's is what the HF tokenizers such files come from use.)
        "default" | "gpt-2" | "gpt2" | "mpt" | "olmo" => (byte_level(true), false),
        // GPT-2's regex after splitting every digit on its own.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => (
            seq(vec![
                json!({ "type": "Digits", "individual_digits": true }),
                byte_level(true),
            ]),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx" => {
            (seq(vec![split(LLAMA3_REGEX), byte_level(false)]), true)
        }
        "qwen2" => (seq(vec![split(QWEN2_REGEX), byte_level(false)]), false),
        _ => return None,
    })
}

/// `tokenizer.ggml.merges` as `[left, right]` pairs; merges that name tokens outside the vocab
/// (which the tokenizers crate would refuse to load) are dropped with a warning.
fn gpt2_merges(g: &GgufFile, vocab: &Vocab<'_>) -> Result<Vec<Json>, GgufError> {
    let merges =
        g.opt_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| GgufError::MissingKey {
                path: g.path().to_path_buf(),
                key: "tokenizer.ggml.merges".into(),
            })?;
    let mut out = Vec::with_capacity(merges.len());
    let mut dropped = 0usize;
    for m in merges {
        // As llama.cpp: split at the first space after the first character.
        let split = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| i);
        let Some(i) = split else {
            dropped += 1;
            continue;
        };
        let (a, b) = (&m[..i], &m[i + 1..]);
        let merged = format!("{a}{b}");
        if vocab.ids.contains_key(a)
            && vocab.ids.contains_key(b)
            && vocab.ids.contains_key(merged.as_str())
        {
            out.push(json!([a, b]));
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::warn!(
            "{}: dropped {dropped} merges that do not fit the vocabulary",
            g.path().display()
        );
    }
    Ok(out)
}

/// Merges for a SentencePiece BPE vocabulary: every split of a normal piece into two normal
/// pieces, ranked by the merged piece's score (highest first), then by the pieces' ids.
fn spm_merges(vocab: &Vocab<'_>, scores: &[f32]) -> Vec<Json> {
    let normal = |s: &str| {
        vocab
            .ids
            .get(s)
            .filter(|&&id| vocab.types[id as usize] == TYPE_NORMAL)
            .copied()
    };
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        if vocab.types[id] != TYPE_NORMAL || vocab.ids.get(piece.as_str()) != Some(&(id as u32)) {
            continue;
        }
        for (i, _) in piece.char_indices().skip(1) {
            if let (Some(l), Some(r)) = (normal(&piece[..i]), normal(&piece[i..])) {
                merges.push((scores[id], id as u32, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .into_iter()
        .map(|(_, _, l, r)| json!([vocab.tokens[l as usize], vocab.tokens[r as usize]]))
        .collect()
}

/// A `TemplateProcessing` post-processor adding BOS and/or EOS, or null when neither is added.
fn template_processing(vocab: &Vocab<'_>, bos: Option<u32>, eos: Option<u32>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let mut special_tokens = Map::new();
    let mut piece = |id: Option<u32>, type_id: u32| -> Option<Json> {
        let id = id?;
        let tok = vocab.tokens[id as usize].clone();
        special_tokens.insert(
            tok.clone(),
            json!({ "id": tok, "ids": [id], "tokens": [tok] }),
        );
        Some(json!({ "SpecialToken": { "id": tok, "type_id": type_id } }))
    };
    let seq = |name: &str, type_id: u32| json!({ "Sequence": { "id": name, "type_id": type_id } });
    let mut single = Vec::new();
    let mut pair = Vec::new();
    single.extend(piece(bos, 0));
    single.push(seq("A", 0));
    single.extend(piece(eos, 0));
    pair.extend(single.iter().cloned());
    pair.extend(piece(bos, 1));
    pair.push(seq("B", 1));
    pair.extend(piece(eos, 1));
    json!({ "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens })
}
