//! `flint bench`: a load generator for any OpenAI-compatible server (flint's, vLLM's, ...).
//!
//! It measures what users of a serving engine feel and what capacity planning needs: time to
//! first token (TTFT), inter-token latency (ITL), end-to-end latency and output tokens per
//! second, at several fixed concurrencies. Every request streams, so TTFT and ITL are seen
//! from the client's side of the socket, queueing and HTTP included.
//!
//! - [`client`]: one streamed request (HTTP + a hand-rolled SSE parser) and its timings.
//! - [`stats`]: percentiles, the per-level report and the table.
//! - [`profile`]: the server's per-step time split (flint's `/metrics`) over each level.
//! - here: the config, the prompts and [`run_level`], which keeps exactly `concurrency`
//!   requests in flight.
//!
//! Every request gets its own random prompt, so a server's prefix cache cannot turn the
//! benchmark into a cache-hit test.

pub mod client;
pub mod profile;
pub mod stats;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::{rngs::StdRng, Rng, SeedableRng};
pub use reqwest::Client;
use serde::Serialize;

pub use client::{discover_model, send_request, RequestOutcome};
pub use stats::{render_header, render_row, render_table, LevelReport, RequestRecord, Summary};

/// One request's prompt: text, or token ids (the completions API takes a list of ids, which
/// fixes the prompt length exactly whatever the server's tokenizer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_owned())
    }
}

/// Which OpenAI API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /completions` with a raw `prompt`: the prompt length is exactly what was sent.
    Completions,
    /// `POST /chat/completions` with one user message (the chat template adds a few tokens).
    Chat,
}

impl Endpoint {
    /// The path under the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat/completions",
        }
    }
}

/// What every request of a run looks like. Serialised (without the key) into `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// The API root, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model to request, or a comma-separated list that requests take in turn (request `i`
    /// the `i mod n`-th): e.g. sixteen LoRA adapters spread over one batch.
    pub model: String,
    #[serde(skip)]
    pub api_key: Option<String>,
    pub endpoint: Endpoint,
    /// `max_tokens` of every request.
    pub output_len: usize,
    /// Send `"ignore_eos": true` so every request generates exactly `output_len` tokens and
    /// runs are comparable; servers that reject unknown fields need it off.
    pub ignore_eos: bool,
    /// Per request, connection to last byte.
    #[serde(rename = "timeout_secs", serialize_with = "secs")]
    pub timeout: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl BenchConfig {
    /// The model of the `index`-th request of a level.
    pub fn model_for(&self, index: usize) -> &str {
        let n = self.model.split(',').count();
        self.model.split(',').nth(index % n).unwrap_or(&self.model)
    }

    /// Completions, 64 output tokens, `ignore_eos`, 600 s timeout: the CLI's defaults.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            endpoint: Endpoint::Completions,
            output_len: 64,
            ignore_eos: true,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Sends `requests` streamed requests with exactly `concurrency` in flight (fewer only as
/// the last ones drain) and reports on them. Request `i` uses `prompts[i % prompts.len()]`:
/// pass at least `requests` prompts to give each its own. Failed requests are counted in the
/// report, not returned as errors; `Err` is only for unusable arguments.
pub async fn run_level(
    cfg: &BenchConfig,
    client: &Client,
    concurrency: usize,
    requests: usize,
    prompts: &[Prompt],
) -> anyhow::Result<LevelReport> {
    anyhow::ensure!(concurrency > 0, "concurrency must be at least 1");
    anyhow::ensure!(!prompts.is_empty(), "no prompts to send");
    // Workers pulling the next index from a counter keep the in-flight count exact without
    // spawning a task per request; spawned (not joined in place) so timestamps are taken
    // by whichever runtime thread is free.
    let cfg = Arc::new(cfg.clone());
    let prompts: Arc<[Prompt]> = prompts.into();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(requests))
        .map(|_| {
            let (cfg, client, prompts, next) = (cfg.clone(), client.clone(), prompts.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break done;
                    }
                    done.push(send_request(&client, &cfg, &prompts[i % prompts.len()], i).await);
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(requests);
    for w in workers {
        outcomes.extend(w.await.context("a benchmark worker panicked")?);
    }
    let wall = start.elapsed().as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let itl: Vec<f64> =
        outcomes.iter().filter(|o| o.error.is_none()).flat_map(|o| o.itl.iter().map(|&d| ms(d))).collect();
    let samples = outcomes
        .into_iter()
        .map(|o| RequestRecord {
            ttft_ms: o.ttft.map(ms).filter(|_| o.error.is_none()),
            e2e_ms: ms(o.e2e),
            output_tokens: if o.error.is_none() { o.output_tokens } else { 0 },
            prompt_tokens: o.prompt_tokens,
            error: o.error,
        })
        .collect();
    Ok(LevelReport::build(concurrency, wall, samples, &itl))
}

/// Common short English words, each one token (with its leading space) in GPT-2-, Llama- and
/// Qwen-style BPE vocabularies, so `n` words make a prompt of about `n` tokens.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as", "his",
    "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "hot", "word", "but", "what", "some", "we",
    "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she",
    "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would", "like",
    "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go",
    "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call", "first",
    "who", "may", "down", "side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place", "made",
    "live", "where", "after", "back", "little", "only", "round", "man", "year", "came", "show", "every", "good", "me",
    "give", "our", "under", "name", "very", "through", "just", "form", "great", "think", "say", "help", "low", "line",
    "before", "turn", "cause", "same", "mean", "move", "right", "boy", "old", "too", "does", "tell", "set", "three",
    "want", "air", "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large", "add",
    "even", "land", "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went",
    "light", "kind", "off", "need", "house", "try", "us", "again", "animal", "point", "mother", "world", "near",
    "build", "self", "earth", "father", "head", "stand", "own", "page", "should", "country", "found", "answer",
    "school", "grow", "study", "still", "learn", "plant", "food", "sun", "four", "between", "state",
];

/// `n` prompts of about `input_len` tokens each, reproducible from `seed`.
///
/// With a tokenizer, each prompt is random vocabulary ids decoded to text, re-encoded and
/// trimmed or topped up until it encodes to exactly `input_len` tokens (the server may still
/// add a BOS token, and chat adds its template). Ids that decode to nothing (special and
/// added tokens) or to broken UTF-8 (lone byte-fallback tokens) are never drawn. Without
/// one, prompts are random words from [`WORDS`]: roughly one token per word in common BPE
/// vocabularies, so `input_len` is then only approximate.
pub fn random_prompts(
    n: usize,
    input_len: usize,
    seed: u64,
    tokenizer: Option<&flint_engine::Tokenizer>,
) -> anyhow::Result<Vec<Prompt>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let Some(tok) = tokenizer else {
        return Ok((0..n)
            .map(|_| {
                Prompt::Text((0..input_len).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" "))
            })
            .collect());
    };
    let usable: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.decode(&[id]).is_ok_and(|s| !s.trim().is_empty() && !s.contains('\u{FFFD}')))
        .collect();
    anyhow::ensure!(!usable.is_empty(), "the tokenizer has no ordinary tokens to build prompts from");
    let draw = |k: usize, rng: &mut StdRng| -> Vec<u32> {
        (0..k).map(|_| usable[rng.random_range(0..usable.len())]).collect()
    };
    let mut prompts = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ids = draw(input_len, &mut rng);
        let mut text = tok.decode(&ids)?;
        // Decoded text re-tokenizes differently (merges across the seams); a few rounds of
        // trimming and topping up settle on the exact length almost always.
        for _ in 0..10 {
            let enc = tok.encode_raw(&text)?;
            if enc.len() == input_len {
                break;
            }
            ids = enc;
            if ids.len() > input_len {
                ids.truncate(input_len);
            } else {
                let more = draw(input_len - ids.len(), &mut rng);
                ids.extend(more);
            }
            text = tok.decode(&ids)?;
        }
        prompts.push(Prompt::Text(text));
    }
    Ok(prompts)
}

/// `n` prompts of exactly `input_len` random token ids below `vocab` each, reproducible from
/// `seed`: exact lengths with no tokenizer at hand (dummy-weight models, other servers).
pub fn random_id_prompts(n: usize, input_len: usize, vocab: u32, seed: u64) -> Vec<Prompt> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| Prompt::Ids((0..input_len).map(|_| rng.random_range(0..vocab.max(1))).collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_prompts_are_seeded_distinct_and_sized() {
        let a = random_prompts(20, 16, 7, None).unwrap();
        assert_eq!(a, random_prompts(20, 16, 7, None).unwrap());
        assert_ne!(a, random_prompts(20, 16, 8, None).unwrap());
        assert!(a.iter().all(|p| matches!(p, Prompt::Text(t) if t.split(' ').count() == 16)));
        let mut uniq = a.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 20);
        assert!(WORDS.len() >= 200, "{}", WORDS.len());
    }

    #[test]
    fn tokenizer_prompts_encode_to_exactly_input_len() {
        let dir = tempfile::tempdir().unwrap();
        flint_engine::tokenizer::testing::write_byte_level_tokenizer(dir.path()).unwrap();
        let tok = flint_engine::Tokenizer::from_dir(dir.path()).unwrap();
        let prompts = random_prompts(8, 32, 0, Some(&tok)).unwrap();
        for p in &prompts {
            let Prompt::Text(t) = p else { panic!("text prompts") };
            assert_eq!(tok.encode_raw(t).unwrap().len(), 32, "{p:?}");
        }
        assert_eq!(prompts, random_prompts(8, 32, 0, Some(&tok)).unwrap());
        assert_ne!(prompts[0], prompts[1]);
    }

    #[test]
    fn id_prompts_are_exact_seeded_and_in_range() {
        let a = random_id_prompts(5, 512, 1000, 3);
        assert_eq!(a, random_id_prompts(5, 512, 1000, 3));
        assert_ne!(a[0], a[1]);
        assert!(a.iter().all(|p| matches!(p, Prompt::Ids(ids) if ids.len() == 512 && ids.iter().all(|&i| i < 1000))));
    }
}
