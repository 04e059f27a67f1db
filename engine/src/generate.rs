//! [`Generator`]: one sequence at a time through the same model path the batched engine uses
//! (paged KV cache, varlen [`ForwardBatch`], chunked prefill). Used by `flint run` and the
//! end-to-end benches.

use std::{path::Path, time::Instant};

use flint_models::{
    load, ForwardBatch, GenerationConfig, KvCache, LoadOptions, LogitsRows, Model, ModelConfig, SeqInput,
};

use crate::{
    detokenizer::Detokenizer,
    error::{EngineError, Result},
    scheduler::{check_admission, AdmitLimits, FinishReason},
    sampling::{SampleContext, Sampler, SamplingParams},
    tokenizer::Tokenizer,
};

/// Knobs of the single-sequence runner.
#[derive(Clone, Debug)]
pub struct GeneratorOptions {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Prompt tokens per forward pass (chunked prefill).
    pub prefill_chunk: usize,
    /// Upper bound on prompt + output tokens; the model's own limit applies too.
    pub max_context: Option<usize>,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self { block_size: 16, prefill_chunk: 512, max_context: None }
    }
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Completion {
    pub prompt_tokens: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Seconds spent on the prompt (until the first token was sampled).
    pub prefill_secs: f64,
    /// Seconds spent on every later token.
    pub decode_secs: f64,
}

/// A model, its tokenizer and a KV cache for one sequence.
pub struct Generator {
    runner: Runner,
    tokenizer: Tokenizer,
    generation: GenerationConfig,
}

/// The model side of a [`Generator`]: kept apart from the tokenizer so text streaming can
/// borrow both at once.
struct Runner {
    model: Box<dyn Model>,
    device: flint_models::Device,
    kv: Option<KvCache>,
    opts: GeneratorOptions,
    eos: Vec<u32>,
}

impl Generator {
    /// Loads the model and tokenizer in `dir`.
    pub fn load(dir: &Path, load_opts: &LoadOptions, opts: GeneratorOptions) -> Result<Self> {
        if opts.block_size == 0 || opts.prefill_chunk == 0 {
            return Err(EngineError::InvalidParameter {
                field: "block_size/prefill_chunk",
                reason: "must be >= 1".into(),
            });
        }
        let tokenizer = Tokenizer::from_dir(dir)?;
        let loaded = load(dir, load_opts)?;
        // End of sequence: generation_config.json wins over config.json, as in transformers.
        let mut eos = loaded.generation.eos_token_id.clone();
        if eos.is_empty() {
            eos = loaded.config.eos_token_ids.clone();
        }
        let runner = Runner { model: loaded.model, device: loaded.device, kv: None, opts, eos };
        Ok(Self { runner, tokenizer, generation: loaded.generation })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &ModelConfig {
        self.runner.model.config()
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Largest prompt + output this generator accepts.
    pub fn max_context(&self) -> usize {
        self.runner.max_context()
    }

    /// Generates from `prompt` token ids, calling `on_token` with each new token id (EOS
    /// excluded). Returns the ids and why generation stopped.
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Completion> {
        let run = self.runner.generate(prompt, params, on_token)?;
        run.into_completion(prompt.len(), &self.tokenizer)
    }

    /// Like [`Self::generate_ids`], streaming text deltas (complete UTF-8 only) to `on_text`.
    pub fn generate_text(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Completion> {
        let mut detok = Detokenizer::new();
        let tok = &self.tokenizer;
        let run = self.runner.generate(prompt, params, |id| {
            let delta = detok.push(tok, id)?;
            if !delta.is_empty() {
                on_text(&delta);
            }
            Ok(())
        })?;
        let rest = detok.flush(tok)?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        run.into_completion(prompt.len(), tok)
    }
}

/// What the token loop produced, before detokenization.
struct Run {
    ids: Vec<u32>,
    finish: FinishReason,
    prefill_secs: f64,
    decode_secs: f64,
}

impl Run {
    fn into_completion(self, prompt_tokens: usize, tok: &Tokenizer) -> Result<Completion> {
        Ok(Completion {
            prompt_tokens,
            text: tok.decode(&self.ids)?,
            token_ids: self.ids,
            finish_reason: self.finish,
            prefill_secs: self.prefill_secs,
            decode_secs: self.decode_secs,
        })
    }
}

impl Runner {
    fn max_context(&self) -> usize {
        let model_max = self.model.config().max_position_embeddings;
        self.opts.max_context.map_or(model_max, |m| m.min(model_max))
    }

    /// Makes sure the cache has room for `tokens` tokens (reused when big enough).
    fn cache_for(&mut self, tokens: usize) -> Result<()> {
        let blocks = tokens.div_ceil(self.opts.block_size);
        if self.kv.as_ref().is_none_or(|kv| kv.num_blocks() < blocks) {
            self.kv = None; // free the old cache before allocating the new one
            let spec = self.model.kv_cache_spec();
            self.kv = Some(KvCache::new(&spec, blocks, self.opts.block_size, &self.device)?);
        }
        Ok(())
    }

    /// The token loop: chunked prefill, then one decode step per token.
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Run> {
        let vocab_size = self.model.config().vocab_size;
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(EngineError::TokenOutOfVocab { id, vocab_size });
        }
        params.check_vocab(vocab_size)?;
        // The cache is sized for this one sequence, so only the context limits it.
        let limits =
            AdmitLimits { max_model_len: self.max_context(), block_size: self.opts.block_size, usable_blocks: usize::MAX };
        check_admission(limits, prompt.len(), params.max_tokens())?;
        let (bs, chunk) = (self.opts.block_size, self.opts.prefill_chunk);
        let total = prompt.len() + params.max_tokens();
        // One sequence owns the whole cache, so its block table is simply 0..n.
        let table: Vec<u32> = (0..total.div_ceil(bs) as u32).collect();
        let device = self.device.clone();
        self.cache_for(total)?;
        let kv = self.kv.as_ref().expect("cache_for allocated it");
        let mut sampler = Sampler::new(params.clone());
        let start = Instant::now();
        let mut logits = None;
        for (i, piece) in prompt.chunks(chunk).enumerate() {
            let last = (i + 1) * chunk >= prompt.len();
            let rows = if last { LogitsRows::Last } else { LogitsRows::None };
            let seq = SeqInput { new_tokens: piece, num_computed: i * chunk, block_table: &table, logits: rows };
            let batch = ForwardBatch::new(&[seq], bs, &device)?;
            let out = self.model.forward(&batch, kv)?;
            if last {
                logits = Some(out);
            }
        }
        let mut logits = logits.expect("a non-empty prompt has a last chunk");
        // Time to first token: the prompt's forward passes plus the first sample.
        let mut prefill_secs = None;
        let mut ids = Vec::new();
        let mut finish = FinishReason::Length;
        loop {
            let mut row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
            let ctx = SampleContext { prompt, output: &ids, eos_ids: &self.eos };
            let next = sampler.sample(&mut row, &ctx).id;
            prefill_secs.get_or_insert_with(|| start.elapsed().as_secs_f64());
            if !params.ignore_eos() && self.eos.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            ids.push(next);
            on_token(next)?;
            if ids.len() == params.max_tokens() {
                break;
            }
            let pos = prompt.len() + ids.len() - 1;
            let tok = [next];
            let seq = SeqInput { new_tokens: &tok, num_computed: pos, block_table: &table, logits: LogitsRows::Last };
            let batch = ForwardBatch::new(&[seq], bs, &device)?;
            logits = self.model.forward(&batch, kv)?;
        }
        let prefill_secs = prefill_secs.unwrap_or_default();
        let decode_secs = start.elapsed().as_secs_f64() - prefill_secs;
        Ok(Run { ids, finish, prefill_secs, decode_secs })
    }
}

