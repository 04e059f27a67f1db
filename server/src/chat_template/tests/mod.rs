//! Unit tests of [`ChatTemplate`](super::ChatTemplate), by theme: rendering real models'
//! templates (`real_templates`), Python compatibility of values, filters and syntax
//! (`python_compat`), and execution limits and error reporting (`limits`). Shared helpers and
//! tokenizer-config parsing tests live here. Long templates are fixtures in `../testdata/`.

use super::*;

mod limits;
mod proptests;
mod python_compat;
mod real_templates;

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
    let no_default = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "x"}]});
    let err = ChatTemplate::from_tokenizer_config(&no_default).unwrap_err();
    assert!(matches!(err, TemplateError::InvalidConfig(_)) && err.to_string().contains("tool_use"));
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
fn template_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ChatTemplate>();
}
