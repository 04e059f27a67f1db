//! Python compatibility: `tojson` like `json.dumps`, values printed like `str()`, pycompat
//! string/dict methods, loop controls, trim/lstrip blocks, `{% generation %}` tags and
//! `strftime_now`.

use super::*;
use crate::chat_template::helpers::python_float_repr;

#[test]
fn strftime_now_rejects_bad_format() {
    let err = render_str("{{ strftime_now('%Q%') }}", serde_json::json!({})).unwrap_err();
    assert!(matches!(err, TemplateError::Render { .. }), "{err}");
    assert!(err.to_string().contains("strftime_now"), "{err}");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let v = serde_json::json!({"d": {"a": [1, 2.5, {"c": null}], "b": 1, "e": [], "o": {}, "s": "é\"\\\u{1}/<>", "t": true}});
    let r = |src: &str| render_str(src, v.clone()).unwrap();
    assert_eq!(
        r("{{ d|tojson }}"),
        r#"{"a": [1, 2.5, {"c": null}], "b": 1, "e": [], "o": {}, "s": "é\"\\\u0001/<>", "t": true}"#
    );
    // Map literals keep their order.
    assert_eq!(
        r(r#"{{ {"b": 1, "a": {"z": 2, "y": [3]}}|tojson }}"#),
        r#"{"b": 1, "a": {"z": 2, "y": [3]}}"#
    );
    assert_eq!(
        r("{{ d.a|tojson(indent=2) }}"),
        "[\n  1,\n  2.5,\n  {\n    \"c\": null\n  }\n]"
    );
    assert_eq!(
        r("{{ d.o|tojson(indent=2) }}|{{ d.e|tojson(indent=2) }}"),
        "{}|[]"
    );
    assert_eq!(
        r("{{ d|tojson(sort_keys=true, separators=(',', ':'), ensure_ascii=true) }}"),
        r#"{"a":[1,2.5,{"c":null}],"b":1,"e":[],"o":{},"s":"\u00e9\"\\\u0001/<>","t":true}"#
    );
    assert_eq!(
        r("{{ 'x'|tojson }}{{ none|tojson }}{{ 3|tojson }}"),
        "\"x\"null3"
    );
    for (f, py) in [
        (0.1, "0.1"),
        (1.0, "1.0"),
        (-2.5, "-2.5"),
        (1e16, "1e+16"),
        (1.5e16, "1.5e+16"),
        (123456789012345.0, "123456789012345.0"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (-0.0, "-0.0"),
        (1.2345e-300, "1.2345e-300"),
    ] {
        assert_eq!(python_float_repr(f), py, "{f}");
    }
}

#[test]
fn pycompat_methods_and_loop_controls() {
    let out = render_str(
        "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.split(',')|length }}|{{ s.strip().startswith('Hello') }}|{{ s.upper() }}|\
         {% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}|\
         {{ [1, 2, 3][::-1] }}|{{ 'abc'[::-1] }}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
        serde_json::json!({"s": "  Hello, World  ", "d": {"a": 2, "z": 1}}),
    )
    .unwrap();
    assert_eq!(
        out,
        "Hello, World|Hello, World  |2|True|  HELLO, WORLD  |13|[3, 2, 1]|cba|a=2;z=1;"
    );
}

#[test]
fn values_print_like_python() {
    let out = render_str(
        "{{ t }} {{ f }} {{ n }} {{ x }} {{ i }} {{ big }} {{ l }} {{ d }} {{ missing }}|{{ s }}",
        serde_json::json!({"t": true, "f": false, "n": null, "x": 2.0, "i": 3, "big": 1e20,
            "l": [1, "a'b", "q\"", "it's \"x\"", "tab\t\\", null, true, 0.5, "\u{a0}é"],
            "d": {"j": {"z": false}, "k": []}, "s": "plain 'text'"}),
    )
    .unwrap();
    // Python jinja2 output.
    assert_eq!(
        out,
        r#"True False None 2.0 3 1e+20 [1, "a'b", 'q"', 'it\'s "x"', 'tab\t\\', None, True, 0.5, '\xa0é'] {'j': {'z': False}, 'k': []} |plain 'text'"#
    );
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let src =
        "<list>\n    {% for m in messages %}\n    <{{ m.role }}>\n    {% endfor %}\n</list>\n";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let out = t.render(&msgs(&[("a", ""), ("b", "")]), false).unwrap();
    // jinja2 with trim_blocks + lstrip_blocks (and no keep_trailing_newline).
    assert_eq!(out, "<list>\n    <a>\n    <b>\n</list>");
}

#[test]
fn generation_tags_are_transparent() {
    let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}\n{% else %}[{{ m.content }}]\n{% endif %}{% endfor %}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    let out = t
        .render(&msgs(&[("user", "q"), ("assistant", "a")]), false)
        .unwrap();
    assert_eq!(out, "[q]\na");
    let src = "x\n  {%- generation -%}\n  y\n  {%- endgeneration +%}\nz {% raw %}{% generation %}{% endraw %}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "xy\nz {% generation %}");
}
