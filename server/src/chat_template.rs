//! Hugging Face chat templates (`chat_template` in `tokenizer_config.json`), rendered with
//! minijinja in an environment that behaves like the one `transformers` builds
//! (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
//! `loopcontrols` extension, `raise_exception`, `strftime_now` and its own `tojson`).
//!
//! Python string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, …) come
//! from `minijinja_contrib::pycompat`. Rendering is bounded: a template that loops for too long
//! runs out of fuel, and output beyond [`DEFAULT_MAX_OUTPUT_BYTES`] is an error.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};

/// Name the template is registered under (shows up in minijinja's messages).
const TEMPLATE_NAME: &str = "chat_template";

/// Instructions a render may execute. Real templates use roughly 25–60 per message (Qwen3:
/// about 250k for 4000 messages), so this allows conversations far longer than any context
/// window, while an endless loop stops after a fraction of a second.
pub const DEFAULT_FUEL: u64 = 5_000_000;

/// Longest prompt a render may produce.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

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
        env.add_template_owned(TEMPLATE_NAME, preprocess(source))
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

/// Rewrites what transformers supports but minijinja does not parse: the `{% generation %}` …
/// `{% endgeneration %}` markers (transformers' `AssistantTracker` extension, which only records
/// where assistant text is) become a no-op `{% if true %}` … `{% endif %}`, keeping the tags'
/// whitespace-control markers so the output is unchanged. `{% raw %}` blocks are left alone.
/// (Python slicing such as `[::-1]` needs no rewrite: minijinja parses it.)
fn preprocess(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match simple_tag(tag) {
            Some(t) if t.keyword == "generation" || t.keyword == "endgeneration" => {
                let replacement = if t.keyword == "generation" {
                    "if true"
                } else {
                    "endif"
                };
                let _ = write!(out, "{{%{} {replacement} {}%}}", t.open_mark, t.close_mark);
                rest = &tag[t.len..];
            }
            Some(t) if t.keyword == "raw" => {
                // Copy through the matching `{% endraw %}` (or to the end; minijinja reports it).
                let mut end = t.len;
                loop {
                    match tag[end..].find("{%") {
                        None => {
                            end = tag.len();
                            break;
                        }
                        Some(off) => {
                            let at = end + off;
                            match simple_tag(&tag[at..]) {
                                Some(e) if e.keyword == "endraw" => {
                                    end = at + e.len;
                                    break;
                                }
                                _ => end = at + 2,
                            }
                        }
                    }
                }
                out.push_str(&tag[..end]);
                rest = &tag[end..];
            }
            _ => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A block tag holding one bare word, `{%[-+]? word [-+]?%}`.
struct SimpleTag<'a> {
    keyword: &'a str,
    open_mark: &'a str,
    close_mark: &'a str,
    /// Bytes the tag spans.
    len: usize,
}

fn simple_tag(tag: &str) -> Option<SimpleTag<'_>> {
    let body = tag.strip_prefix("{%")?;
    let mark_len = |s: &str| usize::from(s.starts_with(['-', '+']));
    let open_mark = &body[..mark_len(body)];
    let body = body[open_mark.len()..].trim_start();
    let word_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (keyword, after) = body.split_at(word_len);
    let after = after.trim_start();
    let close_mark = &after[..mark_len(after)];
    let after = &after[close_mark.len()..];
    if keyword.is_empty() || !after.starts_with("%}") {
        return None;
    }
    Some(SimpleTag {
        keyword,
        open_mark,
        close_mark,
        len: tag.len() - after.len() + 2,
    })
}

/// Prints `{{ value }}` the way Python's `str()` does, as jinja2 does: `True`, `None`,
/// `['a', 1]`, `{'k': 2.0}`. Undefined prints nothing.
fn python_formatter(
    out: &mut minijinja::Output,
    _state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    let write_failed = |_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output");
    match value.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(write_failed),
        _ => {
            let mut s = String::new();
            python_str(value, false, 0, &mut s)?;
            out.write_str(&s).map_err(write_failed)
        }
    }
}

/// Python's `str(value)` (`repr` when `repr` is set, as for container items).
fn python_str(
    v: &Value,
    repr: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "value is nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if !v.is_integer() => match f64::try_from(v.clone()) {
            Ok(f) => out.push_str(&python_float_repr(f)),
            Err(_) => out.push_str(&v.to_string()),
        },
        ValueKind::String if repr => python_str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_str(&item, true, depth + 1, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_str(&key, true, depth + 1, out)?;
                out.push_str(": ");
                python_str(&v.get_item(&key)?, true, depth + 1, out)?;
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`, with escapes for the
/// quote, backslash and non-printable characters.
fn python_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2000}'..='\u{200f}'
            | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{206f}'
            | '\u{3000}'
            | '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `raise_exception(message)`: aborts rendering with `message`.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// `strftime_now(format)`: the local time, formatted like Python's `datetime.now().strftime`.
fn strftime_now(format: &str) -> Result<String, minijinja::Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        ));
    }
    let mut out = String::new();
    write!(
        out,
        "{}",
        chrono::Local::now().format_with_items(items.into_iter())
    )
    .map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format with {format:?}"),
        )
    })?;
    Ok(out)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`. Unlike jinja2's and minijinja's built-in, it does not HTML-escape, and it
/// uses Python's separators (`", "` and `": "`, or `","` between indented items).
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => match v.as_i64() {
                Some(n) => Some(" ".repeat(n.clamp(0, 64) as usize)),
                None => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    ))
                }
            },
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .unwrap_or_default();
            match <[String; 2]>::try_from(parts) {
                Ok([item, key]) => Some((item, key)),
                Err(_) => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ => None,
    };
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = separators.unwrap_or_else(|| {
        (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        )
    });
    let mut w = PyJson {
        out: String::new(),
        indent,
        item_sep,
        key_sep,
        ensure_ascii,
        sort_keys,
    };
    w.value(value, 0)?;
    Ok(w.out)
}

/// A `json.dumps` work-alike over minijinja values.
struct PyJson {
    out: String,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// Nesting beyond this is refused (minijinja values can be self-referential via objects).
const MAX_JSON_DEPTH: usize = 512;

impl PyJson {
    fn value(&mut self, v: &Value, depth: usize) -> Result<(), minijinja::Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(minijinja::Error::new(
                ErrorKind::BadSerialization,
                "tojson: value is nested too deeply",
            ));
        }
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(v),
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Bytes => {
                let s = String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into_owned();
                self.string(&s)
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container('[', ']', items.len(), depth, |w, i, d| {
                    w.value(&items[i], d)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let values = keys
                    .iter()
                    .map(|k| v.get_item(k))
                    .collect::<Result<Vec<_>, _>>()?;
                self.container('{', '}', keys.len(), depth, |w, i, d| {
                    w.key(&keys[i])?;
                    let sep = w.key_sep.clone();
                    w.out.push_str(&sep);
                    w.value(&values[i], d)
                })?;
            }
            ValueKind::Plain | ValueKind::Invalid => {
                if v.kind() == ValueKind::Invalid {
                    return Err(minijinja::Error::new(
                        ErrorKind::BadSerialization,
                        "tojson: invalid value",
                    ));
                }
                self.string(&v.to_string())
            }
            _ => self.string(&v.to_string()),
        }
        Ok(())
    }

    fn container(
        &mut self,
        open: char,
        close: char,
        len: usize,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize, usize) -> Result<(), minijinja::Error>,
    ) -> Result<(), minijinja::Error> {
        self.out.push(open);
        if len == 0 {
            self.out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                let sep = self.item_sep.clone();
                self.out.push_str(&sep);
            }
            self.newline(depth + 1);
            item(self, i, depth + 1)?;
        }
        self.newline(depth);
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(indent);
            }
        }
    }

    /// Python converts str/int/float/bool/None keys to strings.
    fn key(&mut self, k: &Value) -> Result<(), minijinja::Error> {
        match k.kind() {
            ValueKind::String => self.string(k.as_str().unwrap_or_default()),
            ValueKind::Bool => self.string(if k.is_true() { "true" } else { "false" }),
            ValueKind::None | ValueKind::Undefined => self.string("null"),
            ValueKind::Number => {
                let mut tmp = PyJson {
                    out: String::new(),
                    indent: None,
                    item_sep: String::new(),
                    key_sep: String::new(),
                    ensure_ascii: false,
                    sort_keys: false,
                };
                tmp.number(k);
                self.string(&tmp.out)
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::BadSerialization,
                    format!(
                        "tojson: keys must be str, int, float, bool or None, not {}",
                        k.kind()
                    ),
                ))
            }
        }
        Ok(())
    }

    fn number(&mut self, v: &Value) {
        if v.is_integer() {
            // Integers (also 128-bit ones) print exactly.
            self.out.push_str(&v.to_string());
        } else {
            match f64::try_from(v.clone()) {
                // json.dumps writes NaN / Infinity / -Infinity (not valid JSON, but Python's).
                Ok(f) if f.is_nan() => self.out.push_str("NaN"),
                Ok(f) if f.is_infinite() => {
                    self.out
                        .push_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
                }
                Ok(f) => self.out.push_str(&python_float_repr(f)),
                Err(_) => self.out.push_str(&v.to_string()),
            }
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{08}' => self.out.push_str("\\b"),
                '\u{0c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && (c as u32) > 0x7e => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{u:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// Python's `repr(float)` (which `str()` and `json.dumps` use): shortest round-trip digits, positional
/// notation for exponents in [-4, 16), otherwise `1e+16` / `1.5e-07` style.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // position of the decimal point within `digits`
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    fn render_str(source: &str, vars: serde_json::Value) -> Result<String, TemplateError> {
        let t = ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into()))?;
        let extra = vars.as_object().cloned().unwrap_or_default();
        t.render_with_vars(&[], false, &extra)
    }

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_chatml() {
        let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
        let out = t
            .render(
                &msgs(&[("user", "Hi!"), ("assistant", "Hello."), ("user", "2+2?")]),
                true,
            )
            .unwrap();
        // Python jinja2 (transformers' environment) renders exactly this.
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n\
             <|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&msgs(&[("system", "Be terse."), ("user", "Hi")]), false)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    const LLAMA32: &str = r##"{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"##;

    fn today() -> String {
        chrono::Local::now().format("%d %b %Y").to_string()
    }

    #[test]
    fn llama32_with_bos_and_strftime_now() {
        let t = ChatTemplate::new(
            LLAMA32,
            Some("<|begin_of_text|>".into()),
            Some("<|eot_id|>".into()),
        )
        .unwrap();
        let conv = msgs(&[
            ("system", "  You are terse.\n"),
            ("user", "Hi "),
            ("tool", "42"),
        ]);
        let before = today();
        let out = t.render(&conv, true).unwrap();
        let after = today();
        // Python jinja2 output with strftime_now pinned to 2024-07-26.
        let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
            Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
            You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
            <|start_header_id|>ipython<|end_header_id|>\n\n\"42\"<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n";
        assert!(
            out == expected.replace("26 Jul 2024", &before)
                || out == expected.replace("26 Jul 2024", &after),
            "{out:?}"
        );

        // Tools go into the first user message, as indented JSON.
        // Keys in alphabetical order, so the test holds whether or not serde_json preserves
        // insertion order (minijinja does).
        let tools = serde_json::json!({"tools": [{"function": {"description": "Weather — in °C",
            "name": "get_weather", "parameters": {"properties": {}, "required": [], "type": "object"}},
            "type": "function"}], "date_string": "01 Jan 2025"});
        let out = t
            .render_with_vars(
                &msgs(&[("user", "Weather?")]),
                false,
                tools.as_object().unwrap(),
            )
            .unwrap();
        let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
            Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n\
            <|eot_id|><|start_header_id|>user<|end_header_id|>\n\n\
            Given the following functions, please respond with a JSON for a function call with its proper \
            arguments that best answers the given prompt.\n\n\
            Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and \
            its value}.Do not use variables.\n\n\
            {\n    \"function\": {\n        \"description\": \"Weather — in °C\",\n        \
            \"name\": \"get_weather\",\n        \"parameters\": {\n            \"properties\": {},\n            \
            \"required\": [],\n            \"type\": \"object\"\n        }\n    },\n    \"type\": \"function\"\n}\n\n\
            Weather?<|eot_id|>";
        assert_eq!(out, expected);

        // With tools but only a system message the template raises.
        let err = t
            .render_with_vars(&msgs(&[("system", "s")]), false, tools.as_object().unwrap())
            .unwrap_err();
        assert!(
            matches!(&err, TemplateError::Raised(m) if m == "Cannot put tools in the first user message when there's no first user message!"),
            "{err}"
        );
    }

    #[test]
    fn strftime_now_rejects_bad_format() {
        let err = render_str("{{ strftime_now('%Q%') }}", serde_json::json!({})).unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
        assert!(err.to_string().contains("strftime_now"), "{err}");
    }

    const ALTERNATING: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    #[test]
    fn raise_exception_message_propagates() {
        let t = ChatTemplate::new(ALTERNATING, Some("<s>".into()), Some("</s>".into())).unwrap();
        let ok = t
            .render(
                &msgs(&[("user", "a"), ("assistant", "b"), ("user", "c")]),
                true,
            )
            .unwrap();
        assert_eq!(ok, "<s>[INST] a [/INST]b</s>[INST] c [/INST]");
        let err = t
            .render(&msgs(&[("user", "a"), ("user", "b")]), true)
            .unwrap_err();
        match &err {
            TemplateError::Raised(m) => {
                assert_eq!(
                    m,
                    "Conversation roles must alternate user/assistant/user/assistant/..."
                )
            }
            other => panic!("expected Raised, got {other:?}"),
        }
        assert!(err.to_string().contains("roles must alternate"));
        let err = t
            .render(&msgs(&[("user", "a"), ("system", "s")]), true)
            .unwrap_err();
        assert!(matches!(&err, TemplateError::Raised(m) if m.contains("Only user and assistant")));
    }

    #[test]
    fn endless_loop_runs_out_of_fuel_quickly() {
        let start = Instant::now();
        let src = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let err = render_str(src, serde_json::json!({})).unwrap_err();
        assert!(matches!(err, TemplateError::FuelExhausted { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        assert!(err.to_string().contains("execution limit"), "{err}");

        // Recursion is bounded too.
        let src = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(render_str(src, serde_json::json!({})).is_err());
    }

    #[test]
    fn output_limit() {
        let t = ChatTemplate::new(
            "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert!(
            matches!(
                err,
                TemplateError::OutputTooLarge {
                    limit: DEFAULT_MAX_OUTPUT_BYTES
                }
            ),
            "{err}"
        );
        let t = ChatTemplate::new("{{ 'abc' }}", None, None)
            .unwrap()
            .with_max_output_bytes(2);
        assert!(matches!(
            t.render(&[], false),
            Err(TemplateError::OutputTooLarge { limit: 2 })
        ));
        let t = ChatTemplate::new("{{ 'ab' }}", None, None)
            .unwrap()
            .with_max_output_bytes(2);
        assert_eq!(t.render(&[], false).unwrap(), "ab");
    }

    #[test]
    fn syntax_error_is_clear() {
        let err = ChatTemplate::new(
            "line one\n{% for m in messages %}\n{{ m.content }\n{% endfor %}",
            None,
            None,
        )
        .unwrap_err();
        match &err {
            TemplateError::Syntax { line, message } => {
                assert_eq!(*line, Some(3), "{message}");
                assert!(message.contains("syntax error"), "{message}");
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("chat template syntax error (line 3):"),
            "{err}"
        );
        let err = ChatTemplate::new("{% if x %}open", None, None).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
        let err = ChatTemplate::new("{% frobnicate %}", None, None).unwrap_err();
        assert!(
            matches!(err, TemplateError::Syntax { line: Some(1), .. }),
            "{err}"
        );
    }

    const QWEN3: &str = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"##;

    #[test]
    fn qwen3_startswith_split_tojson() {
        let config = serde_json::json!({
            "chat_template": QWEN3,
            "bos_token": null,
            "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": false},
        });
        let t = ChatTemplate::from_tokenizer_config(&config)
            .unwrap()
            .unwrap();
        assert_eq!(t.bos_token(), None);
        assert_eq!(t.eos_token(), Some("<|im_end|>"));
        let conv = msgs(&[
            ("system", "Sys."),
            ("user", "Q1"),
            ("assistant", "<think>\nhmm\n</think>\n\nA1"),
            ("user", "<tool_response>r</tool_response>"),
            ("assistant", "<think>more</think>A2"),
        ]);
        // Keys in alphabetical order (see the Llama test).
        let tools = serde_json::json!({"tools": [{"function": {"description": "say \"hi\" <b> & 'x' — ünï\n",
            "name": "f", "parameters": {"properties": {"n": {"default": 1e-7, "minimum": 0.5, "type": "integer"}},
            "type": "object"}}, "type": "function"}], "enable_thinking": false});
        let out = t
            .render_with_vars(&conv, true, tools.as_object().unwrap())
            .unwrap();
        // Python jinja2 output (transformers' environment).
        let expected = "<|im_start|>system\nSys.\n\n# Tools\n\nYou may call one or more functions to assist with \
            the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
            {\"function\": {\"description\": \"say \\\"hi\\\" <b> & 'x' — ünï\\n\", \"name\": \"f\", \
            \"parameters\": {\"properties\": {\"n\": {\"default\": 1e-07, \"minimum\": 0.5, \"type\": \"integer\"}}, \
            \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\nFor each function call, return a json object with function name and \
            arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
            \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n\
            <|im_start|>user\nQ1<|im_end|>\n\
            <|im_start|>assistant\n<think>\nhmm\n</think>\n\nA1<|im_end|>\n\
            <|im_start|>user\n<tool_response>r</tool_response><|im_end|>\n\
            <|im_start|>assistant\n<think>\nmore\n</think>\n\nA2<|im_end|>\n\
            <|im_start|>assistant\n<think>\n\n</think>\n\n";
        assert_eq!(out, expected);

        let out = t.render(&msgs(&[("user", "hi")]), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn long_conversation_fits_the_limits() {
        let t = ChatTemplate::new(QWEN3, None, None).unwrap();
        let conv: Vec<ChatMessage> = (0..4000)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                ChatMessage::new(role, format!("message number {i}"))
            })
            .collect();
        let start = Instant::now();
        let out = t.render(&conv, true).unwrap();
        assert!(out.ends_with("<|im_start|>assistant\n"));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v = serde_json::json!({"d": {"a": [1, 2.5, {"c": null}], "b": 1, "e": [], "o": {}, "s": "é\"\\\u{1}/<>", "t": true}});
        let r = |src: &str| render_str(src, v.clone()).unwrap();
        assert_eq!(
            r("{{ d|tojson }}"),
            r#"{"a": [1, 2.5, {"c": null}], "b": 1, "e": [], "o": {}, "s": "é\"\\\u0001/<>", "t": true}"#
        );
        // Map literals keep their order.
        assert_eq!(
            r(r#"{{ {"b": 1, "a": {"z": 2, "y": [3]}}|tojson }}"#),
            r#"{"b": 1, "a": {"z": 2, "y": [3]}}"#
        );
        assert_eq!(
            r("{{ d.a|tojson(indent=2) }}"),
            "[\n  1,\n  2.5,\n  {\n    \"c\": null\n  }\n]"
        );
        assert_eq!(
            r("{{ d.o|tojson(indent=2) }}|{{ d.e|tojson(indent=2) }}"),
            "{}|[]"
        );
        assert_eq!(
            r("{{ d|tojson(sort_keys=true, separators=(',', ':'), ensure_ascii=true) }}"),
            r#"{"a":[1,2.5,{"c":null}],"b":1,"e":[],"o":{},"s":"\u00e9\"\\\u0001/<>","t":true}"#
        );
        assert_eq!(
            r("{{ 'x'|tojson }}{{ none|tojson }}{{ 3|tojson }}"),
            "\"x\"null3"
        );
        for (f, py) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (1.2345e-300, "1.2345e-300"),
        ] {
            assert_eq!(python_float_repr(f), py, "{f}");
        }
    }

    #[test]
    fn pycompat_methods_and_loop_controls() {
        let out = render_str(
            "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.split(',')|length }}|{{ s.strip().startswith('Hello') }}|{{ s.upper() }}|\
             {% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}|\
             {{ [1, 2, 3][::-1] }}|{{ 'abc'[::-1] }}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
            serde_json::json!({"s": "  Hello, World  ", "d": {"a": 2, "z": 1}}),
        )
        .unwrap();
        assert_eq!(
            out,
            "Hello, World|Hello, World  |2|True|  HELLO, WORLD  |13|[3, 2, 1]|cba|a=2;z=1;"
        );
    }

    #[test]
    fn values_print_like_python() {
        let out = render_str(
            "{{ t }} {{ f }} {{ n }} {{ x }} {{ i }} {{ big }} {{ l }} {{ d }} {{ missing }}|{{ s }}",
            serde_json::json!({"t": true, "f": false, "n": null, "x": 2.0, "i": 3, "big": 1e20,
                "l": [1, "a'b", "q\"", "it's \"x\"", "tab\t\\", null, true, 0.5, "\u{a0}é"],
                "d": {"j": {"z": false}, "k": []}, "s": "plain 'text'"}),
        )
        .unwrap();
        // Python jinja2 output.
        assert_eq!(
            out,
            r#"True False None 2.0 3 1e+20 [1, "a'b", 'q"', 'it\'s "x"', 'tab\t\\', None, True, 0.5, '\xa0é'] {'j': {'z': False}, 'k': []} |plain 'text'"#
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src =
            "<list>\n    {% for m in messages %}\n    <{{ m.role }}>\n    {% endfor %}\n</list>\n";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let out = t.render(&msgs(&[("a", ""), ("b", "")]), false).unwrap();
        // jinja2 with trim_blocks + lstrip_blocks (and no keep_trailing_newline).
        assert_eq!(out, "<list>\n    <a>\n    <b>\n</list>");
    }

    #[test]
    fn generation_tags_are_transparent() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}\n{% else %}[{{ m.content }}]\n{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let out = t
            .render(&msgs(&[("user", "q"), ("assistant", "a")]), false)
            .unwrap();
        assert_eq!(out, "[q]\na");
        let src = "x\n  {%- generation -%}\n  y\n  {%- endgeneration +%}\nz {% raw %}{% generation %}{% endraw %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "xy\nz {% generation %}");
    }

    #[test]
    fn tokenizer_config_variants() {
        assert!(ChatTemplate::from_tokenizer_config(&serde_json::json!({}))
            .unwrap()
            .is_none());
        assert!(
            ChatTemplate::from_tokenizer_config(&serde_json::json!({"chat_template": null}))
                .unwrap()
                .is_none()
        );
        let list = serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
            ],
            "bos_token": "<s>",
            "eos_token": {"content": "</s>"}
        });
        let t = ChatTemplate::from_tokenizer_config(&list).unwrap().unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "hi")]), false).unwrap(),
            "<s>hi</s>"
        );
        let no_default =
            serde_json::json!({"chat_template": [{"name": "tool_use", "template": "x"}]});
        let err = ChatTemplate::from_tokenizer_config(&no_default).unwrap_err();
        assert!(
            matches!(err, TemplateError::InvalidConfig(_)) && err.to_string().contains("tool_use")
        );
        let bad = serde_json::json!({"chat_template": 3});
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&bad),
            Err(TemplateError::InvalidConfig(_))
        ));
        let bad = serde_json::json!({"chat_template": "x", "eos_token": 5});
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&bad),
            Err(TemplateError::InvalidConfig(_))
        ));
        // Undefined special tokens render as nothing.
        let t = ChatTemplate::from_tokenizer_config(
            &serde_json::json!({"chat_template": "[{{ bos_token }}]"}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "[]");
    }

    #[test]
    fn runtime_errors_do_not_panic() {
        for src in [
            "{{ messages[0].content.nosuchmethod() }}",
            "{{ undefined_thing.attr }}",
            "{{ 1 / 0 }}",
            "{{ messages|tojson(indent='x', bogus=1) }}",
            "{{ raise_exception() }}",
            "{{ strftime_now() }}",
        ] {
            let t = ChatTemplate::new(src, None, None).unwrap();
            let err = t.render(&msgs(&[("user", "x")]), false).unwrap_err();
            assert!(
                matches!(err, TemplateError::Render { .. }),
                "{src}: {err:?}"
            );
        }
    }

    #[test]
    fn template_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }
}
