//! Real models' chat templates (SmolLM2, Llama 3.2, Mistral-style alternation, Qwen3) rendered
//! and compared with what Python jinja2 in transformers' environment produces.

use super::*;

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

const LLAMA32: &str = include_str!("../testdata/llama32.jinja");

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

pub(super) const QWEN3: &str = include_str!("../testdata/qwen3.jinja");

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
