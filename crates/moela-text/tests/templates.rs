//! Chat templates render byte-identically to jinja2 as transformers sets it up
//! (tests/fixtures/text/golden_templates.json, written by tools/make_text_fixtures.py).

mod common;

use std::collections::BTreeMap;

use moela_text::{
    parse_tool_calls, ChatMessage, ChatTemplate, JsonValue, ParsedToolCall, RenderOptions, Role,
    SpecialTokens, TOOL_CALLS_BEGIN,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    special_tokens: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    tools: Option<Vec<JsonValue>>,
    extra: JsonValue,
    expected: Option<String>,
    expected_ids: Option<Vec<u32>>,
    error: Option<String>,
}

impl Case {
    fn options(&self) -> RenderOptions {
        let extra = match &self.extra {
            JsonValue::Object(fields) => fields.clone(),
            other => panic!("extra must be an object, got {other:?}"),
        };
        RenderOptions {
            add_generation_prompt: self.add_generation_prompt,
            tools: self.tools.clone(),
            extra,
            ..Default::default()
        }
    }

    fn label(&self) -> String {
        format!(
            "{} / {} / gen={}",
            self.template, self.name, self.add_generation_prompt
        )
    }
}

fn golden() -> Golden {
    // Parsed straight from the text so that JsonValue keeps the key order.
    serde_json::from_str(&common::read_fixture("golden_templates.json"))
        .expect("golden_templates.json parses")
}

fn special(g: &Golden) -> SpecialTokens {
    SpecialTokens {
        bos_token: g.special_tokens.get("bos_token").cloned(),
        eos_token: g.special_tokens.get("eos_token").cloned(),
        pad_token: g.special_tokens.get("pad_token").cloned(),
        unk_token: g.special_tokens.get("unk_token").cloned(),
    }
}

fn template(g: &Golden, file: &str) -> ChatTemplate {
    let source = common::read_fixture(&format!("templates/{file}"));
    ChatTemplate::with_name(source, special(g), file).expect("template compiles")
}

#[test]
fn every_template_case_renders_byte_identically() {
    let g = golden();
    assert!(g.cases.len() >= 40, "{} cases", g.cases.len());
    let mut failures = Vec::new();
    for case in &g.cases {
        let tpl = template(&g, &case.template);
        let got = tpl.render(&case.messages, &case.options());
        match (&case.expected, &case.error, got) {
            (Some(want), None, Ok(got)) if &got == want => {}
            (Some(want), None, got) => failures.push(format!(
                "{}:\n--- want\n{want}\n--- got\n{got:?}",
                case.label()
            )),
            (None, Some(_), Err(_)) => {}
            (None, Some(want), Ok(got)) => failures.push(format!(
                "{}: expected an error ({want}), rendered {got:?}",
                case.label()
            )),
            _ => failures.push(format!("{}: malformed golden case", case.label())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        g.cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn raise_exception_message_reaches_the_error() {
    let g = golden();
    let case = g
        .cases
        .iter()
        .find(|c| c.name == "raise_error")
        .expect("raise_error case");
    let want = case.error.as_deref().unwrap();
    let message = want.strip_prefix("TemplateError: ").unwrap();
    let err = template(&g, &case.template)
        .render(&case.messages, &case.options())
        .unwrap_err();
    assert!(err.to_string().contains(message), "{err}");
}

/// Rendering then encoding (what apply_chat_template(tokenize=True) does) gives the reference ids,
/// and the tokenizer's own template (from tokenizer_config.json) is V3's.
#[test]
fn rendered_prompts_encode_to_reference_ids() {
    let g = golden();
    let tok = common::v3();
    let own = tok.chat_template().expect("V3 config has a template");
    assert_eq!(
        own.source(),
        common::read_fixture("templates/deepseek-v3.jinja")
    );
    let mut checked = 0;
    for case in g.cases.iter().filter(|c| c.expected_ids.is_some()) {
        let tpl = template(&g, &case.template);
        let text = tpl.render(&case.messages, &case.options()).unwrap();
        let ids = tok.encode(&text, false).unwrap();
        assert_eq!(Some(&ids), case.expected_ids.as_ref(), "{}", case.label());
        if case.template == "deepseek-v3.jinja" {
            let via_tokenizer = own.render(&case.messages, &case.options()).unwrap();
            assert_eq!(
                Some(&via_tokenizer),
                case.expected.as_ref(),
                "{}",
                case.label()
            );
        }
        checked += 1;
    }
    assert!(checked >= 30, "{checked}");
}

/// ChatMessage reads and writes the OpenAI shape: null content kept, absent fields absent.
#[test]
fn chat_message_serde_round_trip() {
    let g = golden();
    let raw: serde_json::Value =
        serde_json::from_str(&common::read_fixture("golden_templates.json")).unwrap();
    for (case, raw_case) in g.cases.iter().zip(raw["cases"].as_array().unwrap()) {
        for (msg, raw_msg) in case
            .messages
            .iter()
            .zip(raw_case["messages"].as_array().unwrap())
        {
            let back = serde_json::to_value(msg).unwrap();
            assert_eq!(&back, raw_msg, "{}", case.label());
        }
    }
    let m: ChatMessage =
        serde_json::from_str(r#"{"role": "assistant", "content": null, "prefix": true}"#).unwrap();
    assert_eq!(m.role, Role::Assistant);
    assert_eq!(m.content, None);
    assert_eq!(m.extra, vec![("prefix".to_string(), JsonValue::Bool(true))]);
    assert!(serde_json::from_str::<ChatMessage>(r#"{"role": "wizard", "content": "x"}"#).is_err());
}

/// The tool-call markup the templates render for a tool-call turn parses back to the calls.
#[test]
fn rendered_tool_calls_parse_back() {
    let g = golden();
    let mut checked = 0;
    for case in &g.cases {
        let Some(rendered) = &case.expected else {
            continue;
        };
        if case.template != "deepseek-v3.jinja" {
            continue;
        }
        // The first assistant turn with tool calls; the official V3 template only renders the
        // first tool-call turn of a conversation with the opening markup.
        let Some(msg) = case.messages.iter().find(|m| m.tool_calls.is_some()) else {
            continue;
        };
        let Some(begin) = rendered.find(TOOL_CALLS_BEGIN) else {
            continue;
        };
        // The model's output for that turn: after the assistant marker up to the
        // end-of-sentence token.
        let marker = "<｜Assistant｜>";
        let start = rendered[..begin].rfind(marker).unwrap() + marker.len();
        let end = begin + rendered[begin..].find("<｜end▁of▁sentence｜>").unwrap();
        let (content, calls) = parse_tool_calls(&rendered[start..end]);
        assert_eq!(
            content,
            msg.content.clone().unwrap_or_default(),
            "{}",
            case.label()
        );
        let want: Vec<ParsedToolCall> = msg
            .tool_calls
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| ParsedToolCall {
                name: c.function.name.clone(),
                arguments: c.function.arguments.clone(),
            })
            .collect();
        assert_eq!(calls, want, "{}", case.label());
        checked += 1;
    }
    assert!(checked >= 6, "{checked}");
}

#[test]
fn apply_chat_template_needs_a_template() {
    let bare = moela_text::Tokenizer::from_json_str(common::v3_tokenizer_json(), None).unwrap();
    let msgs = [ChatMessage::new(Role::User, "Hi")];
    let err = bare
        .apply_chat_template(&msgs, &RenderOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, moela_text::TextError::NoChatTemplate),
        "{err}"
    );
}

#[test]
fn template_syntax_error_is_reported() {
    let err = ChatTemplate::new("{% for x in %}", SpecialTokens::default()).unwrap_err();
    assert!(err.to_string().contains("does not compile"), "{err}");
}

/// `RenderOptions::thinking` reaches a Jinja template as `thinking` (DeepSeek V3.1's templates
/// read it), and `extra` still wins.
#[test]
fn thinking_flag_is_a_template_variable() {
    let t = ChatTemplate::new("{{ thinking }}", SpecialTokens::default()).unwrap();
    let mut opts = RenderOptions {
        thinking: Some(true),
        ..Default::default()
    };
    assert_eq!(t.render(&[], &opts).unwrap(), "True");
    opts.extra = vec![("thinking".into(), JsonValue::Bool(false))];
    assert_eq!(t.render(&[], &opts).unwrap(), "False");
    let unset = RenderOptions::default();
    assert_eq!(t.render(&[], &unset).unwrap(), "");
}
