//! Ollama request bodies, and `options` → flint's sampling fields.
//!
//! Unknown fields are accepted and ignored everywhere: Ollama's clients send fields newer
//! than this layer (`width`, `steps`, `tool_name`, …) and Ollama ignores what it does not use.

use serde::Deserialize;
use serde_json::{Map, Value};

use flint_engine::sampling::MAX_LOGPROBS;

use super::{invalid, OllamaError};
use crate::{
    api::lean::{Loose, OptionsArg},
    generation::SamplingFields,
};

/// Adds the fields `generate` and `chat` share after a request struct's own, with
/// [`Common`] taken out by `common()`. Written out instead of `#[serde(flatten)]`, which would
/// buffer every unknown field of the body into an intermediate tree first.
macro_rules! with_common_fields {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        pub struct $name {
            $($body)*
            pub options: Option<OptionsArg>,
            pub format: Option<Loose>,
            pub think: Option<Loose>,
            pub keep_alive: Option<Loose>,
            pub logprobs: Option<Loose>,
            pub top_logprobs: Option<Loose>,
        }

        impl $name {
            /// The shared fields, moved out.
            pub fn common(&mut self) -> Common {
                Common {
                    options: self.options.take(),
                    format: self.format.take(),
                    think: self.think.take(),
                    keep_alive: self.keep_alive.take(),
                    logprobs: self.logprobs.take(),
                    top_logprobs: self.top_logprobs.take(),
                }
            }
        }
    };
}

with_common_fields! {
/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    /// Token ids of an earlier answer's `context` (deprecated in Ollama, still sent by some
    /// clients to continue a conversation).
    pub context: Option<Vec<i64>>,
    pub stream: Option<bool>,
    pub raw: Option<bool>,
    pub images: Option<Loose>,
}
}

with_common_fields! {
/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Option<Vec<Message>>,
    pub tools: Option<Loose>,
    pub stream: Option<bool>,
}
}

/// The fields `generate` and `chat` share, each checked by hand ([`Common::check`]).
#[derive(Debug, Default)]
pub struct Common {
    pub options: Option<OptionsArg>,
    pub format: Option<Loose>,
    pub think: Option<Loose>,
    pub keep_alive: Option<Loose>,
    pub logprobs: Option<Loose>,
    pub top_logprobs: Option<Loose>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<String>,
    pub images: Option<Loose>,
    pub tool_calls: Option<Loose>,
}

/// `POST /api/show`: `model`, or `name` from older clients.
#[derive(Debug, Deserialize)]
pub struct ShowRequest {
    pub model: Option<String>,
    pub name: Option<String>,
}

/// 400 when a field flint cannot honour is given a non-empty value, rather than silently
/// answering something else than what was asked.
pub fn unsupported(field: &str, v: &Option<Loose>) -> Result<(), OllamaError> {
    match v {
        Some(l) if !l.is_empty() => Err(invalid(field, format!("`{field}` is not supported by flint"))),
        _ => Ok(()),
    }
}

/// The checked [`Common`] fields.
pub struct Checked {
    pub options: Options,
    /// Alternatives per token when logprobs were asked for (0–20).
    pub logprobs: Option<usize>,
}

impl Common {
    /// Checks `format` and `think` (unsupported), `options` and the logprob fields.
    pub fn check(&self) -> Result<Checked, OllamaError> {
        let scalar = |v: &Option<Loose>| v.as_ref().map(|l| l.scalar().cloned());
        match scalar(&self.format) {
            None | Some(Some(Value::Null)) => {}
            Some(Some(Value::String(s))) if s.is_empty() => {}
            Some(_) => return Err(invalid("format", "format: structured output is not supported yet")),
        }
        match scalar(&self.think) {
            None | Some(Some(Value::Null)) | Some(Some(Value::Bool(false))) => {}
            Some(_) => return Err(invalid("think", "think: thinking is not supported by flint's models")),
        }
        let options = match &self.options {
            None => Options::parse(&Map::new())?,
            Some(OptionsArg::Map(m)) => Options::parse(m)?,
            Some(OptionsArg::Other(other)) => {
                return Err(invalid("options", format!("`options` must be an object, got {other}")))
            }
        };
        let want = match &self.logprobs {
            None => false,
            Some(l) => match l.scalar() {
                Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                _ => return Err(invalid("logprobs", format!("`logprobs` must be a boolean, got {l}"))),
            },
        };
        let top = match &self.top_logprobs {
            None => 0,
            Some(l) if l.is_null() => 0,
            Some(l) => match l.scalar().and_then(Value::as_u64) {
                Some(k) if k <= MAX_LOGPROBS as u64 => k as usize,
                _ => {
                    return Err(invalid(
                        "top_logprobs",
                        format!("`top_logprobs` must be an integer in 0..={MAX_LOGPROBS}, got {l}"),
                    ))
                }
            },
        };
        Ok(Checked { options, logprobs: want.then_some(top) })
    }
}

/// Ollama's `options` as flint's sampling fields.
///
/// Ollama's sampling defaults apply where a key is absent (temperature 0.8, top_k 40,
/// top_p 0.9), so an Ollama client gets the output distribution it would get from Ollama.
/// `repeat_penalty` keeps flint's default of 1.0 instead of Ollama's 1.1: Ollama penalizes
/// only the last `repeat_last_n` (64) tokens, flint the whole sequence, so copying the
/// number would not copy the behaviour.
#[derive(Debug)]
pub struct Options {
    pub sampling: SamplingFields,
    /// `num_predict`; `None` (Ollama's -1/-2, or any value <= 0) fills the context.
    pub num_predict: Option<i64>,
    /// `num_ctx`: a cap on prompt + output, never above the model's context.
    pub num_ctx: Option<usize>,
}

/// Keys of Ollama's options that llama.cpp's loader or sampler reads and flint has no use
/// for: accepted as Ollama accepts them, with no effect.
const IGNORED: &[&str] = &[
    "numa",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "embedding_only",
    "num_thread",
    "num_keep",
    "tfs_z",
    "typical_p",
    "repeat_last_n",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
];

impl Options {
    pub fn parse(m: &Map<String, Value>) -> Result<Self, OllamaError> {
        let mut s =
            SamplingFields { temperature: Some(0.8), top_k: Some(40), top_p: Some(0.9), ..SamplingFields::default() };
        let (mut num_predict, mut num_ctx) = (None, None);
        for (key, v) in m {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "temperature" => s.temperature = Some(float(key, v)?),
                "top_p" => s.top_p = Some(float(key, v)?),
                "min_p" => s.min_p = Some(float(key, v)?),
                "repeat_penalty" => s.repetition_penalty = Some(float(key, v)?),
                "presence_penalty" => s.presence_penalty = Some(float(key, v)?),
                "frequency_penalty" => s.frequency_penalty = Some(float(key, v)?),
                "top_k" => s.top_k = Some(int(key, v)?),
                // Ollama: a negative seed (its default, -1) means a random one.
                "seed" => s.seed = Some(int(key, v)?).filter(|&x| x >= 0),
                "num_predict" => num_predict = Some(int(key, v)?).filter(|&n| n > 0),
                "num_ctx" => {
                    let n = int(key, v)?;
                    num_ctx = Some(usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
                        invalid("options.num_ctx", format!("`options.num_ctx` must be a positive integer, got {n}"))
                    })?);
                }
                "stop" => s.stop = Some(stop(v)?),
                k if IGNORED.contains(&k) => tracing::debug!(option = k, "Ollama option has no effect in flint"),
                k => tracing::debug!(option = k, "unknown Ollama option ignored"),
            }
        }
        Ok(Self { sampling: s, num_predict, num_ctx })
    }

    /// `max_tokens` for a prompt of `prompt_len` tokens: `num_predict`, or what is left of
    /// the context (`num_ctx`, at most the model's), never more than the model has room for,
    /// since Ollama stops at the context's end rather than refusing the request.
    pub fn max_tokens(&self, prompt_len: usize, max_model_len: usize) -> i64 {
        let ctx = self.num_ctx.map_or(max_model_len, |c| c.min(max_model_len));
        let room = max_model_len.saturating_sub(prompt_len).max(1) as i64;
        let fill = ctx.saturating_sub(prompt_len).max(1) as i64;
        self.num_predict.unwrap_or(fill).min(room)
    }
}

fn float(key: &str, v: &Value) -> Result<f32, OllamaError> {
    v.as_f64()
        .map(|f| f as f32)
        .ok_or_else(|| invalid(format!("options.{key}"), format!("`options.{key}` must be a number, got {v}")))
}

/// An integer; a number with no fraction (`16.0`) counts, as JSON does not tell them apart.
fn int(key: &str, v: &Value) -> Result<i64, OllamaError> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64))
        .ok_or_else(|| invalid(format!("options.{key}"), format!("`options.{key}` must be an integer, got {v}")))
}

fn stop(v: &Value) -> Result<Vec<String>, OllamaError> {
    let bad = || invalid("options.stop", format!("`options.stop` must be a list of strings, got {v}"));
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Options, OllamaError> {
        Options::parse(v.as_object().expect("an object"))
    }

    #[test]
    fn defaults_and_mapping() {
        let o = parse(json!({})).unwrap();
        assert_eq!((o.sampling.temperature, o.sampling.top_k, o.sampling.top_p), (Some(0.8), Some(40), Some(0.9)));
        assert_eq!(o.max_tokens(10, 100), 90);
        let o = parse(json!({"temperature": 0, "num_predict": 16, "repeat_penalty": 1.2, "seed": -1,
            "stop": ["a", "b"], "mirostat": 2, "whatever": "x", "num_ctx": 40, "top_k": 5.0}))
        .unwrap();
        assert_eq!(o.sampling.temperature, Some(0.0));
        assert_eq!(o.sampling.repetition_penalty, Some(1.2));
        assert_eq!(o.sampling.seed, None);
        assert_eq!(o.sampling.top_k, Some(5));
        assert_eq!(o.max_tokens(10, 100), 16);
        assert_eq!(o.max_tokens(95, 100), 5, "never past the model's context");
        let o = parse(json!({"num_predict": -1, "num_ctx": 40})).unwrap();
        assert_eq!(o.max_tokens(10, 100), 30, "num_ctx caps a context-filling answer");
        assert_eq!(parse(json!({"num_ctx": 4096})).unwrap().max_tokens(10, 100), 90);
    }

    #[test]
    fn wrong_types_name_the_option() {
        for (body, field) in [
            (json!({"temperature": "hot"}), "options.temperature"),
            (json!({"num_predict": 1.5}), "options.num_predict"),
            (json!({"stop": [1]}), "options.stop"),
            (json!({"num_ctx": 0}), "options.num_ctx"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.0.param.as_deref(), Some(field));
            assert!(e.0.message.contains(field), "{}", e.0.message);
        }
    }
}
