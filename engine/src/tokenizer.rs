//! The model's tokenizer (tokenizer.json) plus what tokenizer_config.json says about special
//! tokens and the chat template.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// A loaded tokenizer with the settings generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token matching off: user text goes through it, so a
    /// user typing `<|im_end|>` gets those characters, not the control token.
    literal: tokenizers::Tokenizer,
    /// Text of every special added token.
    special_tokens: Vec<String>,
    /// Prepend the BOS token to plain prompts (`add_bos_token` in tokenizer_config.json).
    pub add_bos_token: bool,
    pub bos_token_id: Option<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// The raw `chat_template` (string, or list of named templates) if the model has one,
    /// from tokenizer_config.json or chat_template.jinja.
    pub chat_template: Option<serde_json::Value>,
    pub path: PathBuf,
}

/// A token string from tokenizer_config.json: `"<s>"` or `{"content": "<s>", ...}`.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::Tokenizer { path, reason: "file not found".into() });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| EngineError::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| EngineError::Tokenizer { path: cfg_path.clone(), reason: e.to_string() })?;
            serde_json::from_str(&text)
                .map_err(|e| EngineError::Tokenizer { path: cfg_path.clone(), reason: e.to_string() })?
        } else {
            serde_json::Value::Null
        };
        // Newer checkpoints ship the template as its own file instead of inside the config.
        let mut chat_template = cfg.get("chat_template").filter(|v| !v.is_null()).cloned();
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.is_file() {
            let text = std::fs::read_to_string(&jinja)
                .map_err(|e| EngineError::Tokenizer { path: jinja.clone(), reason: e.to_string() })?;
            chat_template = Some(serde_json::Value::String(text));
        }
        Ok(Self::from_parts(inner, &cfg, chat_template, path))
    }

    /// A byte-level tokenizer with one token per byte (ids 0..=255), for models that ship no
    /// tokenizer (`--load-format dummy` benchmarks, which send token ids).
    pub fn byte_level() -> Result<Self> {
        let path = PathBuf::from("<built-in byte-level tokenizer>");
        let inner: tokenizers::Tokenizer = testing::byte_level_json()
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| EngineError::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        Ok(Self::from_parts(inner, &serde_json::Value::Null, None, path))
    }

    fn from_parts(
        inner: tokenizers::Tokenizer,
        cfg: &serde_json::Value,
        chat_template: Option<serde_json::Value>,
        path: PathBuf,
    ) -> Self {
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        let mut special_tokens: Vec<String> =
            inner.get_added_tokens_decoder().values().filter(|t| t.special).map(|t| t.content.clone()).collect();
        special_tokens.sort();
        let bos_token = token_str(cfg.get("bos_token"));
        let bos_token_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        Self {
            add_bos_token: cfg.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false),
            bos_token_id,
            bos_token,
            eos_token: token_str(cfg.get("eos_token")),
            chat_template,
            inner,
            literal,
            special_tokens,
            path,
        }
    }

    /// The tokenizer_config.json-style JSON the server's chat template reads.
    pub fn template_config(&self) -> serde_json::Value {
        serde_json::json!({
            "chat_template": self.chat_template,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        })
    }

    /// Encodes a plain prompt, adding BOS when the model wants it. Special-token text typed
    /// in the prompt is matched as special tokens, as HF's `encode` does.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_raw(text)?;
        if self.add_bos_token {
            if let Some(bos) = self.bos_token_id.filter(|b| ids.first() != Some(b)) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Encodes text as is (no BOS/EOS added).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| EngineError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether `text` contains the text of a special token.
    pub fn contains_special_token(&self, text: &str) -> bool {
        self.special_tokens.iter().any(|t| !t.is_empty() && text.contains(t.as_str()))
    }

    /// Encodes a prompt made of pieces: trusted pieces (template text) may contain special
    /// tokens; untrusted ones (user text) are encoded literally, special-token text included.
    pub fn encode_segments(&self, segments: &[(&str, bool)]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for &(text, trusted) in segments {
            if text.is_empty() {
                continue;
            }
            let tok = if trusted { &self.inner } else { &self.literal };
            let enc = tok.encode(text, false).map_err(|e| EngineError::Tokenize(e.to_string()))?;
            ids.extend_from_slice(enc.get_ids());
        }
        Ok(ids)
    }

    /// Decodes one token for display (logprobs): its text, special tokens included.
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    /// The raw bytes of one token (OpenAI's logprob `bytes`), which may be part of a UTF-8
    /// character: byte-level BPE strings are mapped back through GPT-2's byte alphabet,
    /// SentencePiece byte-fallback tokens `<0xAB>` are that byte, `▁` is a space.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.inner.id_to_token(id) else { return Vec::new() };
        if self.inner.get_added_vocabulary().is_special_token(&piece) {
            return piece.into_bytes();
        }
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
        if matches!(self.inner.get_decoder(), Some(tokenizers::DecoderWrapper::ByteLevel(_))) {
            let inverse = byte_level_inverse();
            if let Some(bytes) = piece.chars().map(|c| inverse.get(&c).copied()).collect::<Option<Vec<u8>>>() {
                return bytes;
            }
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }

    /// Decodes ids to text, keeping special tokens out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| EngineError::Tokenize(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// GPT-2's printable-char → byte map (the inverse of [`testing::byte_char`]).
fn byte_level_inverse() -> &'static std::collections::HashMap<char, u8> {
    static MAP: std::sync::OnceLock<std::collections::HashMap<char, u8>> = std::sync::OnceLock::new();
    MAP.get_or_init(|| (0..=255u8).map(|b| (testing::byte_char(b), b)).collect())
}

/// Test support: a tokenizer for the tiny fixture models, which ship without one.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    /// GPT-2's byte → printable-char map, which byte-level BPE vocabularies are written in.
    /// (Used outside tests too, for logprob bytes.)
    pub(crate) fn byte_char(b: u8) -> char {
        let printable = |x: u8| (33..=126).contains(&x) || (161..=172).contains(&x) || x >= 174;
        if printable(b) {
            return b as char;
        }
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).expect("256 + rank < 0xD800 is a valid char")
    }

    /// Writes `tokenizer.json` for a byte-level BPE with one token per byte (id = byte value) and
    /// no merges: every multi-byte character spans several tokens, as byte fallback does.
    pub fn write_byte_level_tokenizer(dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("tokenizer.json"), byte_level_json().to_string())
    }

    /// The tokenizer.json of [`write_byte_level_tokenizer`].
    pub fn byte_level_json() -> serde_json::Value {
        let vocab: serde_json::Map<String, serde_json::Value> =
            (0..=255u8).map(|b| (byte_char(b).to_string(), serde_json::json!(b))).collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": []}
        })
    }
}
