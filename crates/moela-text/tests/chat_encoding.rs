//! DeepSeek V3.2 / V4 / V4.1 chat encodings and DSML completions against DeepSeek's own encoders
//! (tests/fixtures/text/golden_chat_encoding.json, written by
//! tools/make_chat_encoding_fixtures.py).

mod common;

use std::collections::BTreeMap;

use moela_text::{
    parse_completion, parse_dsml_tool_calls, ChatFormat, ChatMessage, CompletionParser,
    DsmlDialect, JsonValue, ParsedCompletion, ParsedToolCall, RenderOptions, Role, TextError,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    renders: Vec<RenderCase>,
    completions: Vec<CompletionCase>,
}

#[derive(Deserialize)]
struct RenderCase {
    name: String,
    messages: Vec<ChatMessage>,
    options: Options,
    results: BTreeMap<String, Outcome>,
}

/// `RenderOptions` as stored: only what a case sets.
#[derive(Deserialize)]
#[serde(default)]
struct Options {
    add_generation_prompt: bool,
    tools: Option<Vec<JsonValue>>,
    thinking: Option<bool>,
    reasoning_effort: Option<String>,
    extra: JsonValue,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            add_generation_prompt: true,
            tools: None,
            thinking: None,
            reasoning_effort: None,
            extra: JsonValue::Object(Vec::new()),
        }
    }
}

impl Options {
    fn render_options(&self) -> RenderOptions {
        let JsonValue::Object(extra) = &self.extra else {
            panic!("extra must be an object");
        };
        RenderOptions {
            add_generation_prompt: self.add_generation_prompt,
            tools: self.tools.clone(),
            thinking: self.thinking,
            reasoning_effort: self.reasoning_effort.clone(),
            extra: extra.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Outcome {
    expected: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct CompletionCase {
    format: String,
    name: String,
    completion: String,
    opens_reasoning: bool,
    reasoning: Option<String>,
    content: String,
    tool_calls: Vec<Call>,
}

#[derive(Deserialize)]
struct Call {
    name: String,
    arguments: String,
}

fn golden() -> Golden {
    // Parsed from the text so that JsonValue keeps the key order.
    serde_json::from_str(&common::read_fixture("golden_chat_encoding.json"))
        .expect("golden_chat_encoding.json parses")
}

/// The stored goldens, or a file written with `make_chat_encoding_fixtures.py --random N`.
fn render_golden() -> (Golden, bool) {
    match std::env::var("MOELA_CHAT_ENCODING_GOLDEN") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (
                serde_json::from_str(&text).expect("the golden parses"),
                true,
            )
        }
        Err(_) => (golden(), false),
    }
}

fn format(name: &str) -> ChatFormat {
    ChatFormat::deepseek_by_name(name).unwrap_or_else(|| panic!("unknown format {name}"))
}

/// Where two strings first differ, with some context, for a readable failure.
fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), b)| a != b)
        .map_or(got.len().min(want.len()), |((i, _), _)| i);
    let from = got.floor_char_boundary(at.saturating_sub(60));
    let want_from = want.floor_char_boundary(at.saturating_sub(60));
    format!(
        "first difference at byte {at}\n  got:  {:?}\n  want: {:?}",
        &got[from..got.ceil_char_boundary((at + 60).min(got.len()))],
        &want[want_from..want.ceil_char_boundary((at + 60).min(want.len()))],
    )
}

#[test]
fn renders_match_deepseek_encoders_byte_for_byte() {
    let (g, random) = render_golden();
    let (mut texts, mut errors) = (0, 0);
    for case in &g.renders {
        let opts = case.options.render_options();
        for (fmt, outcome) in &case.results {
            let got = format(fmt).render(&case.messages, &opts);
            let label = format!("{fmt} / {}", case.name);
            match (&outcome.expected, &outcome.error, got) {
                (Some(want), _, Ok(got)) => {
                    assert!(got == *want, "{label}: {}", first_difference(&got, want));
                    texts += 1;
                }
                (Some(_), _, Err(e)) => panic!("{label}: the reference renders, we fail: {e}"),
                (None, Some(reason), Ok(got)) => {
                    panic!("{label}: the reference fails ({reason}), we render {got:?}")
                }
                (None, Some(_), Err(e)) => {
                    assert!(matches!(e, TextError::ChatEncoding { .. }), "{label}: {e}");
                    errors += 1;
                }
                (None, None, _) => panic!("{label}: neither expected nor error"),
            }
        }
    }
    assert!(
        random || (texts >= 100 && errors >= 20),
        "{texts} renders, {errors} errors"
    );
    eprintln!("{texts} renders and {errors} errors as the reference");
}

/// Through the tokenizer: `with_chat_format` makes `apply_chat_template` use the encoder, and
/// the ids are the text encoded without added special tokens.
#[test]
fn tokenizer_applies_the_chosen_format() {
    let g = golden();
    let case = g
        .renders
        .iter()
        .find(|c| c.name == "tool_round/thinking")
        .expect("case tool_round/thinking");
    let opts = case.options.render_options();
    for fmt in ["deepseek_v32", "deepseek_v4", "deepseek_v41"] {
        let tok = common::v3().clone().with_chat_format(format(fmt));
        assert_eq!(tok.chat_format().map(ChatFormat::name), Some(fmt));
        let p = tok.apply_chat_template(&case.messages, &opts).unwrap();
        assert_eq!(Some(&p.text), case.results[fmt].expected.as_ref(), "{fmt}");
        assert_eq!(p.ids, tok.encode(&p.text, false).unwrap());
        assert_eq!(
            p.ids.first(),
            tok.bos_id().as_ref(),
            "{fmt}: BOS once, from the text"
        );
        assert!(
            p.opens_reasoning,
            "{fmt}: thinking mode leaves the model in <think>"
        );
    }
    // The checkpoint's template stays the default otherwise.
    assert_eq!(
        common::v3().chat_format().map(ChatFormat::name),
        Some("jinja")
    );
    let chat = RenderOptions {
        thinking: Some(false),
        ..Default::default()
    };
    let tok = common::v3()
        .clone()
        .with_chat_format(ChatFormat::DeepseekV4);
    let p = tok
        .apply_chat_template(&[ChatMessage::new(Role::User, "Hi")], &chat)
        .unwrap();
    assert!(p.text.ends_with("<｜Assistant｜></think>") && !p.opens_reasoning);
}

#[test]
fn model_types_select_deepseek_formats() {
    let name = |t| ChatFormat::for_model_type(t).map(|f| f.name());
    assert_eq!(name("deepseek_v32"), Some("deepseek_v32"));
    assert_eq!(name("deepseek_v4"), Some("deepseek_v4"));
    assert_eq!(name("deepseek_v3"), None);
    assert_eq!(
        ChatFormat::DeepseekV41.dsml_dialect(),
        Some(DsmlDialect::V41)
    );
}

fn expected(case: &CompletionCase) -> ParsedCompletion {
    ParsedCompletion {
        reasoning: case.reasoning.clone(),
        content: case.content.clone(),
        tool_calls: case
            .tool_calls
            .iter()
            .map(|c| ParsedToolCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect(),
    }
}

fn dialect(fmt: &str) -> DsmlDialect {
    format(fmt).dsml_dialect().expect("a DeepSeek format")
}

#[test]
fn completions_parse_back_to_the_turn_the_encoder_wrote() {
    let g = golden();
    assert_eq!(g.completions.len(), 30);
    for case in &g.completions {
        let got = parse_completion(
            &case.completion,
            dialect(&case.format),
            case.opens_reasoning,
        );
        assert_eq!(got, Ok(expected(case)), "{} / {}", case.format, case.name);
    }
}

/// Runs the streaming parser over `pieces`; the concatenated deltas and the calls.
fn stream(pieces: &[&str], dialect: DsmlDialect, started: bool) -> ParsedCompletion {
    let mut p = CompletionParser::new(dialect, started);
    let (mut reasoning, mut content) = (String::new(), String::new());
    for piece in pieces {
        let d = p.push(piece);
        reasoning.push_str(&d.reasoning);
        content.push_str(&d.content);
        assert!(
            !content.contains("DSML"),
            "markup reached the content: {content:?}"
        );
    }
    let (d, tool_calls) = p.finish().expect("a well-formed completion");
    reasoning.push_str(&d.reasoning);
    content.push_str(&d.content);
    ParsedCompletion {
        reasoning: p.saw_reasoning().then_some(reasoning),
        content,
        tool_calls,
    }
}

/// Any cut into two or three pieces, and char by char, streams to the one-shot result: tags
/// split across deltas are held back, never shown.
#[test]
fn streaming_matches_the_one_shot_parse_at_every_cut() {
    for case in golden().completions {
        let (text, d, started) = (
            &case.completion,
            dialect(&case.format),
            case.opens_reasoning,
        );
        let want = expected(&case);
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &a in &cuts {
            assert_eq!(stream(&[&text[..a], &text[a..]], d, started), want);
        }
        for &a in cuts.iter().step_by(7) {
            for &b in cuts.iter().filter(|&&b| b >= a).step_by(5) {
                let pieces = [&text[..a], &text[a..b], &text[b..]];
                assert_eq!(stream(&pieces, d, started), want);
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(stream(&pieces, d, started), want, "{}", case.name);
    }
}

const CALL: &str = "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"x\" string=\"false\">1</｜DSML｜parameter>\n</｜DSML｜invoke>";

fn v4(text: &str) -> Result<(String, Vec<ParsedToolCall>), moela_text::DsmlError> {
    parse_dsml_tool_calls(text, DsmlDialect::V4)
}

fn call(name: &str, arguments: &str) -> ParsedToolCall {
    ParsedToolCall {
        name: name.into(),
        arguments: arguments.into(),
    }
}

#[test]
fn dsml_reading_is_lenient_where_the_format_allows() {
    let block = |body: &str| format!("<｜DSML｜tool_calls>\n{body}\n</｜DSML｜tool_calls>");
    // No block: the text as is.
    assert_eq!(v4("just text \n"), Ok(("just text \n".into(), vec![])));
    // A missing `string` attribute: JSON when it parses, else the text.
    let text = block("<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\">[1, 2.0]</｜DSML｜parameter>\n<｜DSML｜parameter name=\"b\" string=\"false\">not json</｜DSML｜parameter>\n<｜DSML｜parameter name=\"c\" string=\"true\">42</｜DSML｜parameter>\n</｜DSML｜invoke>");
    let want = call("f", r#"{"a": [1, 2.0], "b": "not json", "c": "42"}"#);
    assert_eq!(v4(&text), Ok((String::new(), vec![want])));
    // No closing tag after complete calls (the stop token came first); text after a block.
    let open = "Sure.\n\n<｜DSML｜tool_calls>\n";
    assert_eq!(
        v4(&format!("{open}{CALL}\n")),
        Ok(("Sure.".into(), vec![call("f", r#"{"x": 1}"#)]))
    );
    assert_eq!(
        v4(&format!("A{}\n\nB", block(CALL))),
        Ok(("AB".into(), vec![call("f", r#"{"x": 1}"#)]))
    );
    // Two blocks, a spelling variant, and a repeated parameter (the last value wins).
    let twice = format!(
        "{}\n<｜DSML｜toolcalls>\n{CALL}\n</｜DSML｜toolcalls>",
        block(CALL)
    );
    assert_eq!(v4(&twice).map(|(_, c)| c.len()), Ok(2));
    let repeated = block("<｜DSML｜invoke name=\"g\">\n<｜DSML｜parameter name=\"k\" string=\"true\">1</｜DSML｜parameter><｜DSML｜parameter name=\"k\" string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>");
    assert_eq!(
        v4(&repeated),
        Ok((String::new(), vec![call("g", r#"{"k": "2"}"#)]))
    );
    // Another dialect's block is plain text.
    let v32 = format!("<｜DSML｜function_calls>\n{CALL}\n</｜DSML｜function_calls>");
    assert_eq!(v4(&v32), Ok((v32.clone(), vec![])));
    assert_eq!(
        parse_dsml_tool_calls(&v32, DsmlDialect::V32).map(|(_, c)| c),
        Ok(vec![call("f", r#"{"x": 1}"#)])
    );
}

#[test]
fn malformed_dsml_is_a_clear_error() {
    let open = "<｜DSML｜tool_calls>\n";
    let cases = [
        (format!("{open}hello"), "expected `<｜DSML｜invoke name=\"` or `</｜DSML｜tool_calls>`, found \"hello\""),
        (format!("{open}<｜DSML｜invoke name=\"f"), "expected the closing `\"` of the tool name, found \"f\""),
        (format!("{open}<｜DSML｜invoke name=\"f\" x>"), "expected `>` after the tool name"),
        (format!("{open}<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"true\">cut off"), "expected a value closed by `</｜DSML｜parameter>`"),
        (format!("{open}<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter string=\"true\">v</｜DSML｜parameter>"), "a parameter with a `name` attribute"),
        (format!("{open}<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=a>v</｜DSML｜parameter>"), "a parameter attribute `name=\"…\"` or `>`"),
        (format!("{open}<｜DSML｜invoke name=\"f\">\ntext</｜DSML｜invoke>"), "or `</｜DSML｜invoke>`"),
        (format!("{open}{CALL}\n<｜DSML｜invoke name=\"g\">"), "found the end of the output"),
    ];
    for (text, message) in cases {
        let err = v4(&format!("Answer: {text}")).expect_err(&text);
        assert!(err.message.contains(message), "{text:?}: {}", err.message);
        assert_eq!(err.markup, text, "the markup comes back whole");
        assert!(text.is_char_boundary(err.offset));
        let streamed = CompletionParser::new(DsmlDialect::V4, false).finish();
        assert!(streamed.is_ok());
        let mut p = CompletionParser::new(DsmlDialect::V4, false);
        assert_eq!(p.push(&format!("Answer: {text}")).content, "Answer:");
        assert_eq!(p.finish().map(|(_, c)| c), Err(err.clone()));
        let e: TextError = err.into();
        assert!(e
            .to_string()
            .starts_with("malformed DSML tool calls at byte"));
    }
}

/// Every truncation and a few thousand byte-level corruptions of real completions parse to a
/// result or an error, never a panic.
#[test]
fn damaged_completions_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "<",
        ">",
        "\"",
        "｜DSML｜",
        "</",
        "=\"",
        " ",
        "\n",
        "invoke",
        "parameter",
        "é",
    ];
    for case in golden().completions {
        let d = dialect(&case.format);
        let text = &case.completion;
        for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = parse_completion(&text[..cut], d, case.opens_reasoning);
        }
        for _ in 0..100 {
            let mut damaged = text.clone();
            let at = (next() as usize) % (damaged.len() + 1);
            let at = damaged.floor_char_boundary(at);
            let piece = pieces[(next() as usize) % pieces.len()];
            if next() % 2 == 0 {
                damaged.insert_str(at, piece);
            } else {
                let end = damaged.ceil_char_boundary((at + piece.len()).min(damaged.len()));
                damaged.replace_range(at..end, "");
            }
            let _ = parse_completion(&damaged, d, case.opens_reasoning);
        }
    }
}
