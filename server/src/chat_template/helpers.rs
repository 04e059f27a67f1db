//! What the template environment adds to minijinja, as transformers does: the
//! [`raise_exception`] and [`strftime_now`] functions, the [`tojson`] filter (a `json.dumps`
//! work-alike, `PyJson`), and [`python_formatter`], which prints values the way Python's `str()`
//! does (`True`, `None`, `['a', 1]`, [`python_float_repr`]).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::ErrorKind;

use super::Raised;

/// Prints `{{ value }}` the way Python's `str()` does, as jinja2 does: `True`, `None`,
/// `['a', 1]`, `{'k': 2.0}`. Undefined prints nothing.
pub(super) fn python_formatter(
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
pub(super) fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// `strftime_now(format)`: the local time, formatted like Python's `datetime.now().strftime`.
pub(super) fn strftime_now(format: &str) -> Result<String, minijinja::Error> {
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
pub(super) fn tojson(
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
pub(super) fn python_float_repr(f: f64) -> String {
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
