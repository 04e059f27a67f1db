//! Deserializers that read a request in one pass, without buffering.
//!
//! serde's `#[serde(untagged)]` and `#[serde(flatten)]` first copy the value into an
//! intermediate tree and then try each shape on it; `serde_json::Value` builds a tree too. On
//! a body of 32 MiB of small numbers either costs seconds and gigabytes. The fields that take
//! several shapes are read here with visitors that decide on the first token instead:
//! - [`message_content`], [`stop`], [`prompt`]: OpenAI's string-or-list fields;
//! - [`Loose`]: a field checked by hand (Ollama's `format`, `think`, `keep_alive`, …): scalars
//!   are kept, arrays and objects are skipped and only counted;
//! - [`OptionsArg`]: Ollama's `options`, whose known keys keep their (scalar) values and whose
//!   other keys are skipped.

use std::fmt;

use serde::{
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::{Map, Value};

use super::types::{ContentPart, MessageContent, PromptField, StopField};

/// A value checked by hand after parsing: a scalar as it was, or the size of an array or
/// object that was skipped.
#[derive(Clone, Debug, PartialEq)]
pub enum Loose {
    Scalar(Value),
    Array(usize),
    Object(usize),
}

impl Loose {
    /// The scalar, if it is one (`null` included).
    pub fn scalar(&self) -> Option<&Value> {
        match self {
            Self::Scalar(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Self::Scalar(Value::Null))
    }

    /// `null`, an empty array or an empty object.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Scalar(Value::Null) | Self::Array(0) | Self::Object(0))
    }
}

impl fmt::Display for Loose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scalar(v) => write!(f, "{v}"),
            Self::Array(n) => write!(f, "an array of {n} items"),
            Self::Object(n) => write!(f, "an object of {n} keys"),
        }
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Loose, E> {
        Ok(Loose::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
        Ok(Loose::Scalar(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
        Ok(Loose::Scalar(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
        Ok(Loose::Scalar(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::Scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Loose, E> {
        Ok(Loose::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Loose, E> {
        Ok(Loose::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Loose, E> {
        Ok(Loose::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Loose, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Loose::Array(n))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        let mut n = 0;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Loose::Object(n))
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// Ollama's `options`: an object (its known keys with their values as given, arrays of
/// scalars kept for `stop`; other keys skipped, kept as `null` so they can be reported), or
/// anything else, which the caller refuses.
#[derive(Clone, Debug)]
pub enum OptionsArg {
    Map(Map<String, Value>),
    Other(Loose),
}

/// The option keys whose values are kept; every other key's value is skipped.
const OPTION_KEYS: &[&str] = &[
    "temperature",
    "top_p",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "seed",
    "num_predict",
    "num_ctx",
];

/// A value for `options.stop`: a scalar, or an array whose scalar items are kept (an array or
/// object item becomes `null`, which the caller refuses as "not a string").
struct StopOption;

impl<'de> DeserializeSeed<'de> for StopOption {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Loose>()? {
                    items.push(match item {
                        Loose::Scalar(v) => v,
                        _ => Value::Null,
                    });
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
                LooseVisitor.visit_map(map).map(|_| Value::Object(Map::new()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(v.into())
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(v.into())
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::String(v.to_owned()))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for OptionsArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OptionsArg;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OptionsArg, A::Error> {
                let mut out = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = if key == "stop" {
                        map.next_value_seed(StopOption)?
                    } else if OPTION_KEYS.contains(&key.as_str()) {
                        match map.next_value::<Loose>()? {
                            Loose::Scalar(v) => v,
                            // Kept as text so the caller's "must be a number, got …" reads well.
                            other => Value::String(other.to_string()),
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        Value::Null
                    };
                    out.insert(key, value);
                }
                Ok(OptionsArg::Map(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OptionsArg, A::Error> {
                LooseVisitor.visit_seq(seq).map(OptionsArg::Other)
            }
            fn visit_bool<E>(self, v: bool) -> Result<OptionsArg, E> {
                Ok(OptionsArg::Other(Loose::Scalar(Value::Bool(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<OptionsArg, E> {
                Ok(OptionsArg::Other(Loose::Scalar(v.into())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<OptionsArg, E> {
                Ok(OptionsArg::Other(Loose::Scalar(v.into())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OptionsArg, E> {
                LooseVisitor.visit_f64(v).map(OptionsArg::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<OptionsArg, E> {
                Ok(OptionsArg::Other(Loose::Scalar(Value::String(v.to_owned()))))
            }
            fn visit_unit<E>(self) -> Result<OptionsArg, E> {
                Ok(OptionsArg::Map(Map::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field that is a string or a list of `T` (`null`: none), read on its first token.
fn string_or_list<'de, D, T, R>(
    d: D,
    expecting: &'static str,
    one: fn(String) -> R,
    many: fn(Vec<T>) -> R,
) -> Result<Option<R>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T, R> {
        expecting: &'static str,
        one: fn(String) -> R,
        many: fn(Vec<T>) -> R,
    }
    impl<'de, T: Deserialize<'de>, R> Visitor<'de> for V<T, R> {
        type Value = Option<R>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some((self.one)(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some((self.one)(v)))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<T>()? {
                items.push(item);
            }
            Ok(Some((self.many)(items)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_any(V { expecting, one, many })
}

/// `stop`: a string or a list of strings (`null`: none).
pub fn stop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StopField>, D::Error> {
    string_or_list(d, "a string or a list of strings", StopField::One, StopField::Many)
}

/// A chat message's `content`: a string or a list of parts (`null`: none).
pub fn message_content<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MessageContent>, D::Error> {
    string_or_list::<_, ContentPart, _>(d, "a string or a list of content parts", MessageContent::Text, MessageContent::Parts)
}

/// One item of a `prompt` list: its kind is decided by its first token.
enum PromptItem {
    Text(String),
    Token(i64),
    Tokens(Vec<i64>),
}

impl<'de> Deserialize<'de> for PromptItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PromptItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a token id or a list of token ids")
            }
            fn visit_str<E>(self, v: &str) -> Result<PromptItem, E> {
                Ok(PromptItem::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<PromptItem, E> {
                Ok(PromptItem::Text(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PromptItem, E> {
                Ok(PromptItem::Token(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PromptItem, E> {
                i64::try_from(v).map(PromptItem::Token).map_err(|_| E::custom(format!("bad token id {v}")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptItem, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(id) = seq.next_element::<i64>()? {
                    ids.push(id);
                }
                Ok(PromptItem::Tokens(ids))
            }
        }
        d.deserialize_any(V)
    }
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists — all
/// items of a list of one kind.
pub fn prompt<'de, D: Deserializer<'de>>(d: D) -> Result<PromptField, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = PromptField;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string, a list of strings, a list of token ids, or a list of token-id lists")
        }
        fn visit_str<E>(self, v: &str) -> Result<PromptField, E> {
            Ok(PromptField::Text(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<PromptField, E> {
            Ok(PromptField::Text(v))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptField, A::Error> {
            let mixed = || de::Error::custom("the items of `prompt` must all be strings, all token ids, or all lists");
            let Some(first) = seq.next_element::<PromptItem>()? else {
                return Ok(PromptField::Texts(Vec::new()));
            };
            Ok(match first {
                PromptItem::Text(s) => {
                    let mut v = vec![s];
                    while let Some(item) = seq.next_element::<PromptItem>()? {
                        let PromptItem::Text(s) = item else { return Err(mixed()) };
                        v.push(s);
                    }
                    PromptField::Texts(v)
                }
                PromptItem::Token(t) => {
                    let mut v = vec![t];
                    while let Some(t) = seq.next_element::<i64>()? {
                        v.push(t);
                    }
                    PromptField::Tokens(v)
                }
                PromptItem::Tokens(ids) => {
                    let mut v = vec![ids];
                    while let Some(item) = seq.next_element::<PromptItem>()? {
                        let PromptItem::Tokens(ids) = item else { return Err(mixed()) };
                        v.push(ids);
                    }
                    PromptField::TokenLists(v)
                }
            })
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Deserialize)]
    struct P {
        #[serde(deserialize_with = "prompt")]
        prompt: PromptField,
    }

    fn parse_prompt(v: Value) -> Result<PromptField, serde_json::Error> {
        serde_json::from_value::<P>(json!({ "prompt": v })).map(|p| p.prompt)
    }

    #[test]
    fn prompts_of_every_shape() {
        assert!(matches!(parse_prompt(json!("hi")).unwrap(), PromptField::Text(s) if s == "hi"));
        assert!(matches!(parse_prompt(json!(["a", "b"])).unwrap(), PromptField::Texts(v) if v.len() == 2));
        assert!(matches!(parse_prompt(json!([1, 2, 3])).unwrap(), PromptField::Tokens(v) if v == [1, 2, 3]));
        assert!(matches!(parse_prompt(json!([[1], [2, 3]])).unwrap(), PromptField::TokenLists(v) if v.len() == 2));
        assert!(matches!(parse_prompt(json!([])).unwrap(), PromptField::Texts(v) if v.is_empty()));
        for bad in [json!(["a", 1]), json!([1, "a"]), json!([[1], "a"]), json!([1.5]), json!(true), json!({})] {
            assert!(parse_prompt(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn loose_values_skip_what_they_do_not_keep() {
        let l: Loose = serde_json::from_str("[1, [2, {\"a\": [3]}], 4]").unwrap();
        assert_eq!(l, Loose::Array(3));
        assert!(Loose::Array(0).is_empty() && !Loose::Array(1).is_empty());
        let l: Loose = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(l.scalar(), Some(&json!("5m")));
        let o: OptionsArg =
            serde_json::from_value(json!({"temperature": 0.5, "stop": ["a", [1]], "junk": [1, 2], "top_k": [1]})).unwrap();
        let OptionsArg::Map(m) = o else { panic!("an object") };
        assert_eq!(m["temperature"], json!(0.5));
        assert_eq!(m["stop"], json!(["a", null]));
        assert_eq!(m["junk"], Value::Null);
        assert_eq!(m["top_k"], json!("an array of 1 items"));
    }
}
