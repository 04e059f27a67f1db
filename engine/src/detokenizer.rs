//! Incremental detokenization: turns a growing list of token ids into text deltas.
//!
//! Decoding token by token is wrong for byte-level and byte-fallback vocabularies: one
//! character may span several tokens, and decoders join pieces differently at the start of a
//! string. So each step decodes a small window `[prefix, end)` and `[prefix, read)`, and emits
//! the difference only once it no longer ends in an incomplete UTF-8 sequence (U+FFFD).
//!
//! The window is bounded whatever the model emits: a character needs at most 4 bytes, each
//! from at least one token, so once more than [`MAX_PENDING_TOKENS`] tokens have failed to
//! complete one, they are emitted as they decode (U+FFFD for the broken bytes), as Hugging
//! Face's incremental decoders effectively do. A token therefore costs two decodes of at most
//! `2 * (MAX_PENDING_TOKENS + 1)` tokens, never a decode of the whole text.

use crate::{error::Result, tokenizer::Tokenizer};

/// Most tokens held back waiting for a character to complete (a UTF-8 character has at most
/// 4 bytes).
pub const MAX_PENDING_TOKENS: usize = 4;

#[derive(Debug, Default)]
pub struct Detokenizer {
    /// The tokens from `prefix` on (older ones are dropped: they never matter again).
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
        let complete = now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before);
        if complete {
            let delta = now[before.len()..].to_owned();
            self.advance();
            return Ok(delta);
        }
        if self.ids.len() - self.read > MAX_PENDING_TOKENS {
            // These bytes can never become a character: give them up as they decode.
            let delta = now.strip_prefix(before.as_str()).map_or_else(|| after_common_prefix(&before, &now), str::to_owned);
            self.advance();
            return Ok(delta);
        }
        Ok(String::new())
    }

    /// Everything pushed so far has been emitted: the last delta's tokens become the context.
    fn advance(&mut self) {
        self.prefix = self.read;
        self.read = self.ids.len();
        self.ids.drain(..self.prefix);
        self.read -= self.prefix;
        self.prefix = 0;
    }

    /// Whatever is still held back at the end of generation (an incomplete character).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        self.ids.clear();
        (self.prefix, self.read) = (0, 0);
        Ok(now.strip_prefix(before.as_str()).map(str::to_owned).unwrap_or_default())
    }

    /// Tokens currently decoded per push (the context window plus the pending tokens).
    pub fn window_len(&self) -> usize {
        self.ids.len() - self.prefix
    }
}

/// What `now` has past the longest common prefix with `before` (on a char boundary): the new
/// text when a decoder rewrote the context's end.
fn after_common_prefix(before: &str, now: &str) -> String {
    let common = before.char_indices().zip(now.chars()).take_while(|((_, a), b)| a == b).count();
    let at = now.char_indices().nth(common).map_or(now.len(), |(i, _)| i);
    now[at..].to_owned()
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

    #[test]
    fn bytes_that_never_make_a_character_cost_a_bounded_window() {
        let (_dir, tok) = byte_tokenizer();
        let mut d = Detokenizer::new();
        let mut out = String::new();
        // 10k lone continuation bytes, then a valid multi-byte char and an ASCII letter.
        let ids: Vec<u32> = std::iter::repeat_n(0x80, 10_000).chain("é!".bytes().map(u32::from)).collect();
        for &id in &ids {
            out.push_str(&d.push(&tok, id).unwrap());
            assert!(d.window_len() <= 2 * (MAX_PENDING_TOKENS + 1), "window {}", d.window_len());
        }
        out.push_str(&d.flush(&tok).unwrap());
        assert_eq!(out, format!("{}é!", "\u{FFFD}".repeat(10_000)));
        // A broken lead byte followed by good text: the good text is not lost.
        let mut d = Detokenizer::new();
        let mut out = String::new();
        for id in [0xE2u32].into_iter().chain("abcdefg".bytes().map(u32::from)) {
            out.push_str(&d.push(&tok, id).unwrap());
        }
        out.push_str(&d.flush(&tok).unwrap());
        assert_eq!(out, "\u{FFFD}abcdefg");
    }
}
