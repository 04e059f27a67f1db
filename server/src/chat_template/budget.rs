//! What a render may build, not only what it prints: the output cap alone would let a template
//! build a 100 MiB string (`{% set s = s ~ s %}` in a loop, or a `{% set %}` block capturing a
//! loop) and print its length. minijinja has no hook on string building, so the source is
//! rewritten before it is compiled: every value a `{{ … }}` prints, every value a `{% set … = … %}`
//! assigns and every block `{% set %}` captures passes through [`BUILT_FN`], which adds its size to
//! a per-render counter and fails the render beyond the budget. Values pass through unchanged, so
//! the output is the same.

use minijinja::{value::Value, Error, ErrorKind, State};

/// The function the rewritten source calls.
pub(super) const BUILT_FN: &str = "__flint_built";
const COUNTER: &str = "__flint_built_bytes";

/// Carried as the source of the error [`BUILT_FN`] returns.
#[derive(Debug)]
pub(super) struct BuiltTooMuch;

impl std::fmt::Display for BuiltTooMuch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the template built more text than it may")
    }
}

impl std::error::Error for BuiltTooMuch {}

/// The template function: counts `v`'s size (bytes of a string, items of a list or map) against
/// `budget` for this render.
/// The budget for a render whose output is capped at `max_output_bytes`.
pub(super) fn budget_for(max_output_bytes: usize) -> usize {
    max_output_bytes.max(super::DEFAULT_MAX_OUTPUT_BYTES).saturating_mul(8)
}

pub(super) fn counter(budget: usize) -> impl Fn(&mut State, Value) -> Result<Value, Error> + Send + Sync + 'static {
    move |state: &mut State, v: Value| {
        let size = match v.as_str() {
            Some(s) => s.len(),
            None => v.len().unwrap_or(1),
        };
        let used = state.get_temp(COUNTER).and_then(|u| u64::try_from(u).ok()).unwrap_or(0);
        let used = used.saturating_add(size as u64);
        if used > budget as u64 {
            return Err(Error::new(ErrorKind::InvalidOperation, "the template built too much text").with_source(BuiltTooMuch));
        }
        state.set_temp(COUNTER, Value::from(used));
        Ok(v)
    }
}

/// Rewrites `source` so that what it prints, assigns and captures is counted (see the module
/// docs). Comments and `{% raw %}` blocks are copied as they are; the rest of the syntax too.
pub(super) fn instrument(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + source.len() / 4);
    // Targets of the open block `{% set %}`s, innermost last.
    let mut captures: Vec<String> = Vec::new();
    let mut rest = source;
    while let Some(at) = find_open(rest) {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let consumed = if tag.starts_with("{#") {
            let end = tag.find("#}").map_or(tag.len(), |e| e + 2);
            out.push_str(&tag[..end]);
            end
        } else if tag.starts_with("{{") {
            match scan_to(tag, 2, "}}") {
                Some(end) => {
                    let (open, body, close) = split_marks(&tag[2..end]);
                    out.push_str(&format!("{{{{{open} {BUILT_FN}(({})) {close}}}}}", body.trim()));
                    end + 2
                }
                None => {
                    out.push_str(tag);
                    tag.len()
                }
            }
        } else {
            match scan_to(tag, 2, "%}") {
                Some(end) if is_raw(&tag[..end + 2]) => {
                    // Copied through its `{% endraw %}` untouched.
                    let stop = find_endraw(&tag[end + 2..]).map_or(tag.len(), |e| end + 2 + e);
                    out.push_str(&tag[..stop]);
                    stop
                }
                Some(end) => {
                    block_tag(&tag[..end + 2], &mut captures, &mut out);
                    end + 2
                }
                None => {
                    out.push_str(tag);
                    tag.len()
                }
            }
        };
        rest = &rest[at + consumed..];
    }
    out.push_str(rest);
    out
}

/// Handles one `{% … %}` tag (not `{% raw %}`).
fn block_tag(tag: &str, captures: &mut Vec<String>, out: &mut String) {
    let (open, body, close) = split_marks(&tag[2..tag.len() - 2]);
    let trimmed = body.trim();
    let (keyword, after) = trimmed.split_at(trimmed.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(trimmed.len()));
    match keyword {
        "set" => match assignment(after) {
            Some((target, expr)) => {
                out.push_str(&format!("{{%{open} set {target} = {BUILT_FN}(({expr})) {close}%}}"));
            }
            None => {
                // A block set: `{% set name %}` or `{% set name | filter %}`.
                let name: String = after.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                captures.push(name);
                out.push_str(tag);
            }
        },
        "endset" => match captures.pop() {
            Some(name) if !name.is_empty() => {
                // The close mark moves to the added tag, so trimming after it is unchanged.
                out.push_str(&format!("{{%{open} endset %}}{{% set {name} = {BUILT_FN}({name}) {close}%}}"));
            }
            _ => out.push_str(tag),
        },
        _ => out.push_str(tag),
    }
}

fn is_raw(tag: &str) -> bool {
    split_marks(&tag[2..tag.len() - 2]).1.trim() == "raw"
}

fn find_endraw(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(off) = s[from..].find("{%") {
        let at = from + off;
        if let Some(end) = s[at..].find("%}") {
            let (_, body, _) = split_marks(&s[at + 2..at + end]);
            if body.trim() == "endraw" {
                return Some(at + end + 2);
            }
        }
        from = at + 2;
    }
    None
}

/// The next `{{`, `{%` or `{#`.
fn find_open(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1)).find(|&i| b[i] == b'{' && matches!(b[i + 1], b'{' | b'%' | b'#'))
}

/// Where `close` ends the tag that starts at `tag[..from]`, skipping string literals and (for
/// `}}`) braces nested in the expression.
fn scan_to(tag: &str, from: usize, close: &str) -> Option<usize> {
    let b = tag.as_bytes();
    let mut i = from;
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' if close == "}}" => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            _ if depth == 0 && tag[i..].starts_with(close) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `(open mark, body, close mark)` of a tag's inside: the `-`/`+` whitespace controls.
fn split_marks(inner: &str) -> (&str, &str, &str) {
    let open = if inner.starts_with(['-', '+']) { &inner[..1] } else { "" };
    let inner = &inner[open.len()..];
    let close = if inner.ends_with(['-', '+']) { &inner[inner.len() - 1..] } else { "" };
    (open, &inner[..inner.len() - close.len()], close)
}

/// `target = expr` of a `{% set %}`, or `None` for a block set.
fn assignment(after_set: &str) -> Option<(&str, &str)> {
    let b = after_set.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' | b'(' | b'[' | b'{' | b'|' => return None,
            b'=' if b.get(i + 1) != Some(&b'=') => {
                return Some((after_set[..i].trim(), after_set[i + 1..].trim()));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_prints_assignments_and_captures_only() {
        let src = "{#- {{ c }} -#}{{- x -}}{% set a = b ~ '%}' %}{% set ns.n = {'k': {'v': 1}} %}\
                   {%- set t -%}{{ y }}{%- endset -%}{% raw %}{{ r }}{% endraw %}{% if a == b %}z{% endif %}{{ {'a': {'b': '}}'}} }}";
        let out = instrument(src);
        assert_eq!(
            out,
            "{#- {{ c }} -#}{{- __flint_built((x)) -}}{% set a = __flint_built((b ~ '%}')) %}\
             {% set ns.n = __flint_built(({'k': {'v': 1}})) %}{%- set t -%}{{ __flint_built((y)) }}\
             {%- endset %}{% set t = __flint_built(t) -%}{% raw %}{{ r }}{% endraw %}{% if a == b %}z{% endif %}\
             {{ __flint_built(({'a': {'b': '}}'}})) }}"
        );
    }

    #[test]
    fn unterminated_tags_are_left_for_the_parser() {
        assert_eq!(instrument("a {{ b"), "a {{ b");
        assert_eq!(instrument("{% if"), "{% if");
        assert_eq!(instrument("{# open"), "{# open");
    }
}
