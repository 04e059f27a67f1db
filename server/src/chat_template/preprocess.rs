//! Source rewrites applied before a chat template is compiled: transformers accepts tags that
//! minijinja does not parse. [`preprocess`] turns `{% generation %}` … `{% endgeneration %}`
//! into a no-op block; `SimpleTag` recognises a one-word block tag.

use std::fmt::Write as _;

/// Rewrites what transformers supports but minijinja does not parse: the `{% generation %}` …
/// `{% endgeneration %}` markers (transformers' `AssistantTracker` extension, which only records
/// where assistant text is) become a no-op `{% if true %}` … `{% endif %}`, keeping the tags'
/// whitespace-control markers so the output is unchanged. `{% raw %}` blocks are left alone.
/// (Python slicing such as `[::-1]` needs no rewrite: minijinja parses it.)
pub(super) fn preprocess(source: &str) -> String {
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
