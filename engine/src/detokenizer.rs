//! Incremental detokenization: turns a growing list of token ids into text deltas.
//!
//! Decoding token by token is wrong for byte-level and byte-fallback vocabularies: one
//! character may span several tokens, and decoders join pieces differently at the start of a
//! string. So each step decodes a small window `[prefix, end)` and `[prefix, read)`, and emits
//! the difference only once it no longer ends in an incomplete UTF-8 sequence (U+FFFD).

use crate::{error::Result, tokenizer::Tokenizer};

#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// End of what has been emitted as text.
    read: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let delta = now[before.len()..].to_owned();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back at the end of generation (an incomplete character).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.strip_prefix(before.as_str()).map(str::to_owned).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_tokenizer() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().expect("temp dir");
        crate::tokenizer::testing::write_byte_level_tokenizer(dir.path()).expect("write tokenizer");
        let tok = Tokenizer::from_dir(dir.path()).expect("tokenizer loads");
        (dir, tok)
    }

    #[test]
    fn multi_byte_characters_are_emitted_whole() {
        let (_dir, tok) = byte_tokenizer();
        let text = "a ü€ 🦀!";
        let ids = tok.encode_raw(text).unwrap();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        let mut d = Detokenizer::new();
        let mut out = String::new();
        for &id in &ids {
            let delta = d.push(&tok, id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "no partial characters leak: {delta:?}");
            out.push_str(&delta);
        }
        out.push_str(&d.flush(&tok).unwrap());
        assert_eq!(out, text);
    }

    #[test]
    fn token_bytes_are_the_raw_bytes() {
        let (_dir, tok) = byte_tokenizer();
        assert_eq!(tok.token_bytes(0x88), [0x88]);
        assert_eq!(tok.token_bytes(b' ' as u32), b" ");
        assert_eq!(tok.token_bytes(b'a' as u32), b"a");
    }

    #[test]
    fn an_incomplete_tail_is_flushed_at_the_end() {
        let (_dir, tok) = byte_tokenizer();
        let mut d = Detokenizer::new();
        assert_eq!(d.push(&tok, b'x' as u32).unwrap(), "x");
        // The first byte of "é" alone: held back, then flushed as the replacement char.
        assert_eq!(d.push(&tok, 0xC3).unwrap(), "");
        assert_eq!(d.flush(&tok).unwrap(), "\u{FFFD}");
    }
}
