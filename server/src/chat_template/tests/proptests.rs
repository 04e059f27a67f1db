//! Property tests: random conversations (any roles, contents full of special-token look-alikes,
//! template syntax and unusual Unicode) and random template variables rendered through the
//! committed real templates never panic, never exceed the output limit, fail only with a
//! render-time error (never a syntax error: the template is fixed), and render the same way
//! every time.

use proptest::prelude::*;

use super::real_templates::QWEN3;
use super::*;

const LLAMA32: &str = include_str!("../testdata/llama32.jinja");
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Case count, times `FLINT_PROPTEST_SCALE` when set (a deeper local run).
fn cases(n: u32) -> ProptestConfig {
    let scale = std::env::var("FLINT_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    ProptestConfig::with_cases(n.saturating_mul(scale.max(1)))
}

/// Pieces that mean something to a template or a tokenizer.
const TRICKY: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|python_tag|>",
    "<think>",
    "</think>",
    "<tool_response>",
    "</tool_response>",
    "<tool_call>",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "raise_exception('x')",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\0",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "🦀",
    "ß",
    "'",
    "\"",
    "\\",
];

fn text(max_pieces: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => proptest::sample::select(TRICKY).prop_map(str::to_string),
        2 => "\\PC{0,8}",
        1 => "[a-z ]{0,16}",
    ];
    proptest::collection::vec(piece, 0..max_pieces).prop_map(|p| p.concat())
}

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(&["system", "user", "assistant", "tool", "developer", "ipython"][..])
            .prop_map(str::to_string),
        1 => text(3),
    ]
}

fn conversation() -> impl Strategy<Value = Vec<ChatMessage>> {
    proptest::collection::vec(
        (role(), text(12)).prop_map(|(r, c)| ChatMessage::new(r, c)),
        0..10,
    )
}

/// Extra template variables: tools (any JSON objects), thinking, a fixed date.
fn extras() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text(4).prop_map(serde_json::Value::from),
    ];
    let json = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let tool = (text(3), json.clone()).prop_map(|(name, params)| {
        serde_json::json!({"type": "function", "function": {"name": name, "parameters": params}})
    });
    (
        proptest::option::of(proptest::collection::vec(
            prop_oneof![3 => tool, 1 => json],
            0..3,
        )),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(tools, thinking)| {
            let mut m = serde_json::Map::new();
            m.insert("date_string".into(), "26 Jul 2024".into());
            if let Some(t) = tools {
                m.insert("tools".into(), serde_json::Value::Array(t));
            }
            if let Some(b) = thinking {
                m.insert("enable_thinking".into(), b.into());
            }
            m
        })
}

fn templates() -> Vec<(&'static str, ChatTemplate)> {
    let t = |src, bos: Option<&str>, eos: &str| {
        ChatTemplate::new(src, bos.map(str::to_string), Some(eos.to_string()))
            .expect("the committed template compiles")
    };
    vec![
        (
            "llama32",
            t(LLAMA32, Some("<|begin_of_text|>"), "<|eot_id|>"),
        ),
        ("qwen3", t(QWEN3, None, "<|im_end|>")),
        ("chatml", t(CHATML, None, "<|im_end|>")),
    ]
}

/// The two renders of one input agree, and a result respects the limit.
fn check(
    name: &str,
    t: &ChatTemplate,
    limit: usize,
    msgs: &[ChatMessage],
    gen: bool,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TestCaseError> {
    let first = t.render_with_vars(msgs, gen, extra);
    let second = t.render_with_vars(msgs, gen, extra);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            prop_assert_eq!(a, b, "{} renders differently twice", name);
            prop_assert!(
                a.len() <= limit,
                "{}: {} bytes > limit {}",
                name,
                a.len(),
                limit
            );
        }
        (Err(a), Err(b)) => {
            prop_assert_eq!(
                a.to_string(),
                b.to_string(),
                "{} fails differently twice",
                name
            )
        }
        _ => prop_assert!(false, "{name}: {first:?} then {second:?}"),
    }
    if let Err(e) = &first {
        prop_assert!(
            matches!(
                e,
                TemplateError::Raised(_)
                    | TemplateError::Render { .. }
                    | TemplateError::OutputTooLarge { .. }
                    | TemplateError::BuiltTooMuch { .. }
            ),
            "{}: unexpected error {}",
            name,
            e
        );
        if let TemplateError::OutputTooLarge { limit: l } = e {
            prop_assert_eq!(*l, limit);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn real_templates_render_any_conversation(
        msgs in conversation(),
        gen in any::<bool>(),
        extra in extras(),
        limit in prop_oneof![Just(DEFAULT_MAX_OUTPUT_BYTES), Just(4096usize), 0usize..256],
    ) {
        for (name, t) in templates() {
            let t = t.with_max_output_bytes(limit);
            check(name, &t, limit, &msgs, gen, &extra)?;
        }
    }

    /// A plain conversation (user/assistant alternating after an optional system message)
    /// renders with every template, and ChatML keeps every content verbatim.
    #[test]
    fn well_formed_conversations_render(
        system in proptest::option::of(text(6)),
        turns in proptest::collection::vec(text(8), 1..8),
    ) {
        let mut msgs: Vec<ChatMessage> = system.into_iter().map(|s| ChatMessage::new("system", s)).collect();
        for (i, c) in turns.iter().enumerate() {
            msgs.push(ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, c.clone()));
        }
        let vars = serde_json::Map::from_iter([("date_string".to_string(), "26 Jul 2024".into())]);
        for (name, t) in templates() {
            let out = t.render_with_vars(&msgs, true, &vars);
            let out = out.map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
            if name == "chatml" {
                for m in &msgs {
                    prop_assert!(out.contains(&m.content), "{name} lost {:?}", m.content);
                }
            }
        }
    }
}

/// Issue 16 item 3: strings a template builds in memory count against no limit (only what it
/// writes does), so doubling a string a few times allocates far more than the output cap.
#[test]
fn built_strings_count_against_the_output_cap() {
    let src = "{% set ns = namespace(s='x' * 100) %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}";
    let t = ChatTemplate::new(src, None, None).expect("compiles");
    // Builds a 100 MiB string to print 9 bytes.
    let err = t
        .render(&[], false)
        .expect_err("100 MiB built under a 1 MiB cap");
    assert!(matches!(err, TemplateError::BuiltTooMuch { .. }), "{err}");
}
