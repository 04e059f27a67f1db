//! Training files in OpenAI's chat fine-tuning format: JSONL, one conversation a line,
//! `{"messages": [{"role": ..., "content": ..., "weight": 0|1}, ...]}`.
//!
//! A file is checked whole when it is uploaded (`POST /v1/files`, purpose `fine-tune`), so a
//! job never starts on data it would fail on hours later; every error names its line and the
//! field. Tool calls and function definitions are refused rather than silently dropped: a model
//! trained without them would learn conversations that never happened.

use serde_json::{Map, Value};

/// The roles a training message may have.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

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
    fn new(line: usize, message: impl Into<String>) -> Self {
        Self { line, message: message.into() }
    }
}

/// Parses and checks a whole training file; the first problem found is the error.
pub fn parse_jsonl(data: &[u8]) -> Result<Vec<Conversation>, DatasetError> {
    // Editors on Windows save a byte-order mark; it is not part of the first line's JSON.
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect();
    // Trailing blank lines are what editors leave; blank lines between examples usually mean a
    // broken export, so they are refused where they are.
    let end = lines.iter().rposition(|l| !is_blank(l)).map_or(0, |i| i + 1);
    let mut out = Vec::with_capacity(end);
    for (i, raw) in lines[..end].iter().enumerate() {
        let line = i + 1;
        if is_blank(raw) {
            return Err(DatasetError::new(line, "empty line (each line must be one JSON example)"));
        }
        let text = std::str::from_utf8(raw).map_err(|e| DatasetError::new(line, format!("invalid UTF-8: {e}")))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| DatasetError::new(line, format!("invalid JSON: {e}")))?;
        out.push(conversation(&value).map_err(|m| DatasetError::new(line, m))?);
    }
    if out.is_empty() {
        return Err(DatasetError::new(0, "the file has no examples"));
    }
    Ok(out)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// One line's example, or what is wrong with it (the caller adds the line number).
fn conversation(value: &Value) -> Result<Conversation, String> {
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object with `messages`, found {}", kind(value)));
    };
    if let Some(key) = obj.keys().find(|k| *k != "messages") {
        return Err(match key.as_str() {
            "tools" | "functions" | "parallel_tool_calls" => {
                format!("`{key}` is not supported: flint fine-tunes plain chat conversations (`messages` only)")
            }
            _ => format!("unknown field `{key}` (an example has `messages` only)"),
        });
    }
    let messages = match obj.get("messages") {
        None => return Err("`messages` is required".into()),
        Some(Value::Array(a)) if a.is_empty() => return Err("`messages` is empty".into()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("`messages` must be an array, found {}", kind(other))),
    };
    let turns = messages.iter().enumerate().map(|(i, m)| turn(i, m)).collect::<Result<Vec<_>, _>>()?;
    if !turns.iter().any(|t| t.role == "assistant" && t.weight != 0.0) {
        return Err("no assistant message to learn from (every example needs one with weight 1)".into());
    }
    Ok(Conversation { messages: turns })
}

fn turn(i: usize, value: &Value) -> Result<Turn, String> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = value else {
        return Err(format!("`{at}` must be an object, found {}", kind(value)));
    };
    check_keys(&at, m)?;
    let role = match m.get("role") {
        None => return Err(format!("`{at}.role` is required")),
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
        Some(Value::String(r)) => return Err(format!("`{at}.role`: `{r}` is not a role (one of {})", ROLES.join(", "))),
        Some(other) => return Err(format!("`{at}.role` must be a string, found {}", kind(other))),
    };
    let content = content(&at, m.get("content"))?;
    if let Some(v) = m.get("name") {
        if !v.is_string() {
            return Err(format!("`{at}.name` must be a string, found {}", kind(v)));
        }
    }
    let weight = match m.get("weight") {
        None => f32::from(u8::from(role == "assistant")),
        Some(_) if role != "assistant" => return Err(format!("`{at}.weight` is only allowed on assistant messages")),
        Some(v) => match v.as_f64() {
            Some(w) if w == 0.0 || w == 1.0 => w as f32,
            _ => return Err(format!("`{at}.weight` must be 0 or 1, found {v}")),
        },
    };
    Ok(Turn { role, content, weight })
}

/// Refuses fields flint cannot train on, naming them, instead of ignoring them.
fn check_keys(at: &str, m: &Map<String, Value>) -> Result<(), String> {
    for key in m.keys() {
        match key.as_str() {
            "role" | "content" | "weight" | "name" => {}
            // A tool result's id only links it to a call; the text is what is trained on.
            "tool_call_id" if m.get(key).is_some_and(Value::is_string) => {}
            "tool_call_id" => return Err(format!("`{at}.tool_call_id` must be a string")),
            "tool_calls" | "function_call" => {
                return Err(format!("`{at}.{key}` is not supported: flint fine-tunes plain text messages"))
            }
            _ => return Err(format!("unknown field `{at}.{key}`")),
        }
    }
    Ok(())
}

/// A message's text: a string, or text parts joined.
fn content(at: &str, value: Option<&Value>) -> Result<String, String> {
    match value {
        None | Some(Value::Null) => Err(format!("`{at}.content` is required")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        _ => return Err(format!("`{p}.text` must be a string")),
                    },
                    Some(other) => {
                        return Err(format!("`{p}.type`: `{other}` parts are not supported (only `text`)"))
                    }
                    None => return Err(format!("`{p}` must be an object with `type` and `text`")),
                }
            }
            Ok(text)
        }
        Some(other) => Err(format!("`{at}.content` must be a string or an array of text parts, found {}", kind(other))),
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
}
