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
