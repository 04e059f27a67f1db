//! Bounded rendering (fuel, output size, long conversations) and clear errors for templates
//! that do not parse or fail at run time.

use std::time::{Duration, Instant};

use super::real_templates::QWEN3;
use super::*;

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
