//! Hugging Face chat templates (`chat_template` in `tokenizer_config.json`), rendered with
//! minijinja in an environment that behaves like the one `transformers` builds
//! (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
//! `loopcontrols` extension, `raise_exception`, `strftime_now` and its own `tojson`).
//!
//! Python string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, …) come
//! from `minijinja_contrib::pycompat`. Rendering is bounded: a template that loops for too long
//! runs out of fuel, and output beyond [`DEFAULT_MAX_OUTPUT_BYTES`] is an error.
//!
//! - [`ChatTemplate`] (this file): compiling a template and rendering a conversation, with
//!   [`ChatMessage`] as the template sees it and [`TemplateError`] for every failure;
//! - `helpers`: the functions, filter and formatter the environment adds (`raise_exception`,
//!   `strftime_now`, `tojson`, Python-style printing of values);
//! - `preprocess`: source rewrites for tags transformers accepts and minijinja does not
//!   (`{% generation %}`).

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind};

mod budget;
mod helpers;
mod preprocess;
#[cfg(test)]
mod tests;

use helpers::{python_formatter, raise_exception, strftime_now, tojson};
use preprocess::preprocess;

/// Name the template is registered under (shows up in minijinja's messages).
const TEMPLATE_NAME: &str = "chat_template";

/// Instructions a render may execute. Real templates use roughly 25–60 per message (Qwen3:
/// about 250k for 4000 messages), so this allows conversations far longer than any context
/// window, while an endless loop stops after a fraction of a second.
pub const DEFAULT_FUEL: u64 = 5_000_000;

/// Longest prompt a render may produce.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Most text a render may build, printed or not (values printed, assigned by `{% set %}` or
/// captured by a block `{% set %}`, summed): real templates build a few times their output,
/// so a template doubling a string in a loop stops here instead of exhausting memory.
pub const DEFAULT_MAX_BUILT_BYTES: usize = 8 * DEFAULT_MAX_OUTPUT_BYTES;
// (A larger output limit raises it to 8x that limit, see `budget::budget_for`.)

/// One chat message as the template sees it (`message.role`, `message['content']`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn at_line(line: &Option<usize>) -> String {
    match line {
        Some(l) => format!(" (line {l})"),
        None => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("chat template syntax error{}: {message}", at_line(.line))]
    Syntax {
        message: String,
        line: Option<usize>,
    },

    /// The template called `raise_exception(message)`, typically to reject a conversation it
    /// cannot format (e.g. roles not alternating).
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),

    /// The render executed more than its instruction budget (an endless or huge loop).
    #[error("chat template exceeded its execution limit of {fuel} instructions (endless loop?)")]
    FuelExhausted { fuel: u64 },

    /// The render built more text than its budget ([`DEFAULT_MAX_BUILT_BYTES`]), printed or
    /// not (a string doubled in a loop, say).
    #[error("chat template built more than {limit} bytes of text")]
    BuiltTooMuch { limit: usize },

    /// The rendered prompt grew beyond the output limit.
    #[error("chat template output exceeds the limit of {limit} bytes")]
    OutputTooLarge { limit: usize },

    /// Any other failure while rendering (undefined attribute, bad filter argument, …).
    #[error("chat template failed to render{}: {message}", at_line(.line))]
    Render {
        message: String,
        line: Option<usize>,
    },

    /// `tokenizer_config.json` has a `chat_template` of the wrong shape.
    #[error("invalid chat template in tokenizer config: {0}")]
    InvalidConfig(String),
}

/// Carried as the source of the error `raise_exception` returns, so that the message can be
/// told apart from minijinja's own errors.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A compiled chat template plus the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    fuel: u64,
    max_output_bytes: usize,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("fuel", &self.fuel)
            .field("max_output_bytes", &self.max_output_bytes)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` once; rendering reuses it.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax {
                message: e.to_string(),
                line: None,
            })?;
        env.set_syntax(syntax);
        env.set_fuel(Some(DEFAULT_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_function(budget::BUILT_FN, budget::counter(DEFAULT_MAX_BUILT_BYTES));
        env.add_template_owned(TEMPLATE_NAME, budget::instrument(&preprocess(source)))
            .map_err(|e| TemplateError::Syntax {
                message: error_message(&e),
                line: e.line(),
            })?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            fuel: DEFAULT_FUEL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        })
    }

    /// Reads `chat_template` from a parsed `tokenizer_config.json`: a string, or a list of
    /// `{"name", "template"}` of which the one named `default` is used. `bos_token` and
    /// `eos_token` may be strings or `{"content": …}` objects. `Ok(None)` when the config has no
    /// chat template (the template may then live in `chat_template.jinja`, see [`Self::new`]).
    pub fn from_tokenizer_config(json: &serde_json::Value) -> Result<Option<Self>, TemplateError> {
        let source = match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => {
                let mut names = Vec::new();
                let mut default = None;
                for entry in list {
                    let name = entry.get("name").and_then(|n| n.as_str());
                    let template = entry.get("template").and_then(|t| t.as_str());
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(TemplateError::InvalidConfig(
                            "a chat_template list entry lacks a string \"name\" or \"template\""
                                .into(),
                        ));
                    };
                    if name == "default" {
                        default = Some(template.to_string());
                    }
                    names.push(name.to_string());
                }
                default.ok_or_else(|| {
                    TemplateError::InvalidConfig(format!(
                        "several chat templates ({}) and none named \"default\"",
                        names.join(", ")
                    ))
                })?
            }
            Some(other) => {
                return Err(TemplateError::InvalidConfig(format!(
                    "chat_template must be a string or a list, not {}",
                    json_kind(other)
                )))
            }
        };
        let bos = special_token(json, "bos_token")?;
        let eos = special_token(json, "eos_token")?;
        Self::new(&source, bos, eos).map(Some)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Changes the instruction budget per render (default [`DEFAULT_FUEL`]).
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        self.fuel = fuel;
        self.env.set_fuel(Some(fuel));
        self
    }

    /// Changes the output limit per render (default [`DEFAULT_MAX_OUTPUT_BYTES`]).
    pub fn with_max_output_bytes(mut self, limit: usize) -> Self {
        self.max_output_bytes = limit;
        self.env.add_function(budget::BUILT_FN, budget::counter(budget::budget_for(limit)));
        self
    }

    /// Renders the conversation into a prompt, with `messages`, `add_generation_prompt`,
    /// `bos_token` and `eos_token` as template variables.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_vars(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Like [`Self::render`], with further template variables (`tools`, `enable_thinking`,
    /// `date_string`, …). The four standard variables win over same-named extras.
    pub fn render_with_vars(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        let mut ctx: BTreeMap<String, Value> = extra
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(Serde(v))))
            .collect();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        // Like transformers, a special token that is not set is simply not defined.
        for (name, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            match token {
                Some(t) => ctx.insert(name.into(), Value::from(t.as_str())),
                None => ctx.remove(name),
            };
        }

        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render {
                message: error_message(&e),
                line: None,
            })?;
        let mut out = LimitedWriter {
            buf: Vec::new(),
            limit: self.max_output_bytes,
            exceeded: false,
        };
        let result = template.render_captured_to(Value::from(ctx), &mut out);
        if out.exceeded {
            return Err(TemplateError::OutputTooLarge {
                limit: self.max_output_bytes,
            });
        }
        result.map_err(|e| self.render_error(e))?;
        String::from_utf8(out.buf).map_err(|_| TemplateError::Render {
            message: "output is not valid UTF-8".into(),
            line: None,
        })
    }

    fn render_error(&self, e: minijinja::Error) -> TemplateError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(Raised(msg)) = err.downcast_ref::<Raised>() {
                return TemplateError::Raised(msg.clone());
            }
            if err.downcast_ref::<budget::BuiltTooMuch>().is_some() {
                return TemplateError::BuiltTooMuch { limit: budget::budget_for(self.max_output_bytes) };
            }
            source = err.source();
        }
        match e.kind() {
            ErrorKind::OutOfFuel => TemplateError::FuelExhausted { fuel: self.fuel },
            ErrorKind::SyntaxError => TemplateError::Syntax {
                message: error_message(&e),
                line: e.line(),
            },
            _ => TemplateError::Render {
                message: error_message(&e),
                line: e.line(),
            },
        }
    }
}

/// `kind: detail`, without minijinja's "(in template:line)" suffix (the line is kept apart).
fn error_message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A special token from the tokenizer config: `"<s>"`, `{"content": "<s>", …}` or null.
fn special_token(json: &serde_json::Value, key: &str) -> Result<Option<String>, TemplateError> {
    match json.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(obj @ serde_json::Value::Object(_)) => match obj.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TemplateError::InvalidConfig(format!(
                "{key} is an object without a string \"content\""
            ))),
        },
        Some(other) => Err(TemplateError::InvalidConfig(format!(
            "{key} must be a string or an object, not {}",
            json_kind(other)
        ))),
    }
}

/// Bounds the rendered output; minijinja stops at the first failed write.
struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
