//! Training files in OpenAI's chat fine-tuning format: JSONL, one conversation a line,
//! `{"messages": [{"role": ..., "content": ..., "weight": 0|1}, ...]}`.
//!
//! [`JsonlReader`] checks a file as a stream, one line at a time: an upload is validated while
//! it arrives (`POST /v1/files`, purpose `fine-tune`), so a job never starts on data it would
//! fail on hours later, and memory stays bounded by [`MAX_LINE_BYTES`] whatever the file's
//! size. Every error names its line and the field. Tool calls and function definitions are
//! refused rather than silently dropped: a model trained without them would learn
//! conversations that never happened.

use serde_json::{Map, Value};

/// The roles a training message may have.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The longest line (one example) a training file may have: 1 MiB, counted without the
/// newline (a `\r` before it counts). OpenAI caps an example at 64 k tokens, about 256 KiB of
/// text; this leaves room for JSON escaping, and bounds what holding and parsing one line costs.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The most lines a training file may have (trailing blank lines included): 1,000,000, ten
/// times what OpenAI recommends training on. It bounds the work of validating a file and of
/// preparing a job's examples, whatever `--max-upload-bytes` allows.
pub const MAX_LINES: usize = 1_000_000;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Turn>,
}

/// One message of a [`Conversation`].
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub role: String,
    /// The text (content parts joined).
    pub content: String,
    /// The loss weight of the message's tokens: 1 for assistant messages unless the file says
    /// 0, 0 for every other role (they are context, not targets).
    pub weight: f32,
}

/// Why a training file was refused: the 1-based line (0: the file as a whole) and what is wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DatasetError {
    pub line: usize,
    pub message: String,
}

impl DatasetError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Self { line, message: message.into() }
    }
}

/// What a [`JsonlReader`] hands each example to (with its line); an error stops the file there.
pub type OnExample<'a> = dyn FnMut(usize, Conversation) -> Result<(), DatasetError> + 'a;

/// Checks a training file fed in pieces of any size, holding at most one line.
///
/// A byte-order mark before the first line is skipped (Windows editors write one), `\r\n`
/// ends a line like `\n`, and trailing blank lines are ignored (editors leave them); a blank
/// line between examples is refused where it is, since it usually means a broken export.
/// The first error is final: later calls return it again.
#[derive(Debug, Default)]
pub struct JsonlReader {
    /// Lines ended so far.
    lines: usize,
    /// The current line's bytes so far, at most [`MAX_LINE_BYTES`].
    buf: Vec<u8>,
    /// The first of the blank lines since the last example (an error if another follows).
    blank_since: Option<usize>,
    examples: usize,
    failed: Option<DatasetError>,
}

impl JsonlReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the next bytes of the file; `each` gets every example completed by them.
    pub fn feed(&mut self, data: &[u8], each: &mut OnExample) -> Result<(), DatasetError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let out = self.split(data, each);
        if let Err(e) = &out {
            self.failed = Some(e.clone());
        }
        out
    }

    /// The end of the file: its last line (if it has no newline), and the number of examples.
    pub fn finish(mut self, each: &mut OnExample) -> Result<usize, DatasetError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.buf.is_empty() {
            self.end_line(each)?;
        }
        if self.examples == 0 {
            return Err(DatasetError::new(0, "the file has no examples"));
        }
        Ok(self.examples)
    }

    fn split(&mut self, mut data: &[u8], each: &mut OnExample) -> Result<(), DatasetError> {
        while !data.is_empty() {
            let (part, rest, ended) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            // Checked before copying, so a line never costs more than the cap to hold.
            if self.buf.len() + part.len() > MAX_LINE_BYTES {
                let message = format!("the line is longer than {MAX_LINE_BYTES} bytes (the most one example may have)");
                return Err(DatasetError::new(self.lines + 1, message));
            }
            self.buf.extend_from_slice(part);
            data = rest;
            if ended {
                self.end_line(each)?;
            }
        }
        Ok(())
    }

    fn end_line(&mut self, each: &mut OnExample) -> Result<(), DatasetError> {
        self.lines += 1;
        let line = self.lines;
        if line > MAX_LINES {
            return Err(DatasetError::new(line, format!("the file has more than {MAX_LINES} lines (the most one file may have)")));
        }
        let mut raw = &self.buf[..];
        if line == 1 {
            raw = raw.strip_prefix(BOM).unwrap_or(raw);
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if is_blank(raw) {
            self.blank_since.get_or_insert(line);
        } else {
            if let Some(blank) = self.blank_since {
                return Err(DatasetError::new(blank, "empty line (each line must be one JSON example)"));
            }
            let conv = parse_line(line, raw)?;
            self.examples += 1;
            each(line, conv)?;
        }
        self.buf.clear();
        Ok(())
    }
}

/// Parses and checks a whole training file held in memory; the first problem found is the
/// error. (Files of any size go through [`JsonlReader`].)
pub fn parse_jsonl(data: &[u8]) -> Result<Vec<Conversation>, DatasetError> {
    let mut out = Vec::new();
    let mut push = |_: usize, c: Conversation| {
        out.push(c);
        Ok(())
    };
    let mut reader = JsonlReader::new();
    reader.feed(data, &mut push)?;
    reader.finish(&mut push)?;
    Ok(out)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn parse_line(line: usize, raw: &[u8]) -> Result<Conversation, DatasetError> {
    let text = std::str::from_utf8(raw).map_err(|e| DatasetError::new(line, format!("invalid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| DatasetError::new(line, format!("invalid JSON: {e}")))?;
    conversation(&value).map_err(|Problem(m)| DatasetError::new(line, m))
}

/// What is wrong with one line's example; [`parse_line`] adds the line number.
struct Problem(String);

fn bad<T>(message: impl Into<String>) -> Result<T, Problem> {
    Err(Problem(message.into()))
}

/// One line's example.
fn conversation(value: &Value) -> Result<Conversation, Problem> {
    let Value::Object(obj) = value else {
        return bad(format!("expected a JSON object with `messages`, found {}", kind(value)));
    };
    if let Some(key) = obj.keys().find(|k| *k != "messages") {
        return Err(Problem(match key.as_str() {
            "tools" | "functions" | "parallel_tool_calls" => {
                format!("`{key}` is not supported: flint fine-tunes plain chat conversations (`messages` only)")
            }
            _ => format!("unknown field `{key}` (an example has `messages` only)"),
        }));
    }
    let messages = match obj.get("messages") {
        None => return bad("`messages` is required"),
        Some(Value::Array(a)) if a.is_empty() => return bad("`messages` is empty"),
        Some(Value::Array(a)) => a,
        Some(other) => return bad(format!("`messages` must be an array, found {}", kind(other))),
    };
    let turns = messages.iter().enumerate().map(|(i, m)| turn(i, m)).collect::<Result<Vec<_>, _>>()?;
    if !turns.iter().any(|t| t.role == "assistant" && t.weight != 0.0) {
        return bad("no assistant message to learn from (every example needs one with weight 1)");
    }
    Ok(Conversation { messages: turns })
}

fn turn(i: usize, value: &Value) -> Result<Turn, Problem> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = value else {
        return bad(format!("`{at}` must be an object, found {}", kind(value)));
    };
    check_keys(&at, m)?;
    let role = match m.get("role") {
        None => return bad(format!("`{at}.role` is required")),
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
        Some(Value::String(r)) => return bad(format!("`{at}.role`: `{r}` is not a role (one of {})", ROLES.join(", "))),
        Some(other) => return bad(format!("`{at}.role` must be a string, found {}", kind(other))),
    };
    let content = content(&at, m.get("content"))?;
    if let Some(v) = m.get("name") {
        if !v.is_string() {
            return bad(format!("`{at}.name` must be a string, found {}", kind(v)));
        }
    }
    let weight = match m.get("weight") {
        None => f32::from(u8::from(role == "assistant")),
        Some(_) if role != "assistant" => return bad(format!("`{at}.weight` is only allowed on assistant messages")),
        Some(v) => match v.as_f64() {
            Some(w) if w == 0.0 || w == 1.0 => w as f32,
            _ => return bad(format!("`{at}.weight` must be 0 or 1, found {v}")),
        },
    };
    Ok(Turn { role, content, weight })
}

/// Refuses fields flint cannot train on, naming them, instead of ignoring them.
fn check_keys(at: &str, m: &Map<String, Value>) -> Result<(), Problem> {
    for key in m.keys() {
        match key.as_str() {
            "role" | "content" | "weight" | "name" => {}
            // A tool result's id only links it to a call; the text is what is trained on.
            "tool_call_id" if m.get(key).is_some_and(Value::is_string) => {}
            "tool_call_id" => return bad(format!("`{at}.tool_call_id` must be a string")),
            "tool_calls" | "function_call" => {
                return bad(format!("`{at}.{key}` is not supported: flint fine-tunes plain text messages"))
            }
            _ => return bad(format!("unknown field `{at}.{key}`")),
        }
    }
    Ok(())
}

/// A message's text: a string, or text parts joined.
fn content(at: &str, value: Option<&Value>) -> Result<String, Problem> {
    match value {
        None | Some(Value::Null) => bad(format!("`{at}.content` is required")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        _ => return bad(format!("`{p}.text` must be a string")),
                    },
                    Some(other) => {
                        return bad(format!("`{p}.type`: `{other}` parts are not supported (only `text`)"))
                    }
                    None => return bad(format!("`{p}` must be an object with `type` and `text`")),
                }
            }
            Ok(text)
        }
        Some(other) => bad(format!("`{at}.content` must be a string or an array of text parts, found {}", kind(other))),
    }
}

/// What a JSON value is, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(data: &str) -> DatasetError {
        parse_jsonl(data.as_bytes()).expect_err("the file is refused")
    }

    const GOOD: &str = r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

    #[test]
    fn valid_file() {
        let data = format!(
            "\u{feff}{GOOD}\r\n{}\n{}\n\n \n",
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "u"}, {"role": "assistant", "content": "x", "weight": 0}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "y", "weight": 1}]}"#,
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "42", "tool_call_id": "c1"}, {"role": "assistant", "content": ""}]}"#,
        );
        let convs = parse_jsonl(data.as_bytes()).unwrap();
        assert_eq!(convs.len(), 3);
        let weights: Vec<f32> = convs[0].messages.iter().map(|t| t.weight).collect();
        assert_eq!(weights, [0.0, 0.0, 1.0]);
        assert_eq!(convs[0].messages[2].content, "hello");
        let second = &convs[1].messages;
        assert_eq!(second[0], Turn { role: "user".into(), content: "ab".into(), weight: 0.0 });
        assert_eq!(second[1].weight, 0.0);
        assert_eq!(second[3].weight, 1.0);
        assert_eq!(convs[2].messages[1].role, "tool");
    }

    #[test]
    fn empty_file() {
        for data in ["", "\n", "  \n\n"] {
            let e = err(data);
            assert_eq!(e.line, 0);
            assert_eq!(e.to_string(), "line 0: the file has no examples");
        }
    }

    #[test]
    fn blank_line_between_examples() {
        let e = err(&format!("{GOOD}\n\n{GOOD}\n"));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("empty line"), "{e}");
    }

    #[test]
    fn invalid_utf8() {
        let mut data = format!("{GOOD}\n").into_bytes();
        data.extend_from_slice(b"{\"messages\": \"\xff\"}\n");
        let e = parse_jsonl(&data).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("UTF-8"), "{e}");
    }

    #[test]
    fn invalid_json() {
        let e = err(&format!("{GOOD}\n{GOOD}\n{{\"messages\": [\n"));
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("line 3: invalid JSON"), "{e}");
        assert_eq!(err("[1, 2]").message, "expected a JSON object with `messages`, found an array");
    }

    #[test]
    fn missing_or_bad_messages() {
        assert_eq!(err("{}").message, "`messages` is required");
        assert_eq!(err(r#"{"messages": []}"#).message, "`messages` is empty");
        assert!(err(r#"{"messages": {}}"#).message.contains("must be an array"));
        assert!(err(r#"{"messages": [1]}"#).message.contains("`messages[0]` must be an object"));
    }

    #[test]
    fn bad_role() {
        let e = err(r#"{"messages": [{"role": "bot", "content": "x"}]}"#);
        assert!(e.message.contains("`messages[0].role`: `bot` is not a role"), "{e}");
        assert!(err(r#"{"messages": [{"content": "x"}]}"#).message.contains("`messages[0].role` is required"));
        assert!(err(r#"{"messages": [{"role": 1, "content": "x"}]}"#).message.contains("must be a string"));
    }

    #[test]
    fn bad_content() {
        let e = err(r#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}"#);
        assert_eq!(e.message, "`messages[0].content` is required");
        let e = err(r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#);
        assert!(e.message.contains("`image_url` parts are not supported"), "{e}");
        let e = err(r#"{"messages": [{"role": "user", "content": 3}]}"#);
        assert!(e.message.contains("must be a string or an array"), "{e}");
    }

    #[test]
    fn bad_weight() {
        let e = err(r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}"#);
        assert_eq!(e.message, "`messages[1].weight` must be 0 or 1, found 0.5");
        let e = err(r#"{"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}"#);
        assert_eq!(e.message, "`messages[0].weight` is only allowed on assistant messages");
        let e = err(r#"{"messages": [{"role": "assistant", "content": "a", "weight": "1"}]}"#);
        assert!(e.message.contains("must be 0 or 1"), "{e}");
    }

    #[test]
    fn no_assistant_turn() {
        let e = err(&format!("{GOOD}\n{}", r#"{"messages": [{"role": "user", "content": "q"}]}"#));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("no assistant message"), "{e}");
        let e = err(r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}"#);
        assert!(e.message.contains("no assistant message"), "{e}");
    }

    #[test]
    fn unsupported_fields() {
        let e = err(r#"{"messages": [{"role": "assistant", "content": "a"}], "tools": []}"#);
        assert!(e.message.contains("`tools` is not supported"), "{e}");
        let e = err(r#"{"messages": [{"role": "assistant", "content": "a"}], "functions": []}"#);
        assert!(e.message.contains("`functions` is not supported"), "{e}");
        let e = err(r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": []}]}"#);
        assert!(e.message.contains("`messages[0].tool_calls` is not supported"), "{e}");
        let e = err(r#"{"messages": [{"role": "assistant", "content": "a", "extra": 1}]}"#);
        assert_eq!(e.message, "unknown field `messages[0].extra`");
        let e = err(r#"{"messages": [{"role": "assistant", "content": "a", "name": 1}]}"#);
        assert!(e.message.contains("`messages[0].name` must be a string"), "{e}");
    }

    /// Feeds `data` in pieces of `n` bytes; the examples' lines, or the error.
    fn chunked(data: &[u8], n: usize) -> Result<Vec<usize>, DatasetError> {
        let mut lines = Vec::new();
        let mut each = |line: usize, _: Conversation| {
            lines.push(line);
            Ok(())
        };
        let mut r = JsonlReader::new();
        for piece in data.chunks(n) {
            r.feed(piece, &mut each)?;
        }
        r.finish(&mut each)?;
        Ok(lines)
    }

    #[test]
    fn pieces_of_any_size_read_alike() {
        let data = format!("\u{feff}{GOOD}\r\n{GOOD}\n{GOOD}\n\r\n\n");
        for n in [1, 2, 3, 7, 64, data.len()] {
            assert_eq!(chunked(data.as_bytes(), n), Ok(vec![1, 2, 3]), "pieces of {n}");
        }
        let bad = format!("{GOOD}\n\n{GOOD}");
        for n in [1, 5, bad.len()] {
            assert_eq!(chunked(bad.as_bytes(), n).unwrap_err().line, 2, "pieces of {n}");
        }
        // No newline after the last example.
        assert_eq!(chunked(GOOD.as_bytes(), 10), Ok(vec![1]));
    }

    #[test]
    fn a_line_over_the_cap_is_refused_before_it_is_held() {
        let mut data = format!("{GOOD}\n").into_bytes();
        data.extend(std::iter::repeat_n(b' ', MAX_LINE_BYTES + 1));
        let mut r = JsonlReader::new();
        let mut each = |_: usize, _: Conversation| Ok(());
        let e = r.feed(&data, &mut each).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("longer than 1048576 bytes"), "{e}");
        assert!(r.buf.len() <= MAX_LINE_BYTES);
        // The error is final.
        assert_eq!(r.feed(b"\n", &mut each), Err(e.clone()));
        assert_eq!(r.finish(&mut each), Err(e));
        // A line of exactly the cap is read (and here refused as JSON, not for its length).
        let mut exact = vec![b'x'; MAX_LINE_BYTES];
        exact.push(b'\n');
        assert!(parse_jsonl(&exact).unwrap_err().message.starts_with("invalid JSON"));
    }

    #[test]
    fn a_file_over_the_line_cap_is_refused() {
        let mut data = format!("{GOOD}\n").into_bytes();
        data.resize(data.len() + MAX_LINES, b'\n');
        let e = parse_jsonl(&data).unwrap_err();
        assert_eq!(e.line, MAX_LINES + 1);
        assert!(e.message.contains("more than 1000000 lines"), "{e}");
        data.truncate(data.len() - 1);
        assert_eq!(parse_jsonl(&data).unwrap().len(), 1);
    }

    #[test]
    fn the_callback_can_refuse_an_example() {
        let data = format!("{GOOD}\n{GOOD}\n");
        let mut each = |line: usize, _: Conversation| if line == 2 { Err(DatasetError::new(line, "no")) } else { Ok(()) };
        let mut r = JsonlReader::new();
        assert_eq!(r.feed(data.as_bytes(), &mut each), Err(DatasetError::new(2, "no")));
    }
}
