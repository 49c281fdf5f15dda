//! Tests of a run's choice state: reasoning, tool calls and their streaming.

use super::*;

fn token(text: &str) -> TokenEvent {
    TokenEvent {
        id: 0,
        text: text.into(),
        logprob: None,
        top_logprobs: Vec::new(),
    }
}

/// DeepSeek V3.2/V4 completions (rendered by DeepSeek's own encoders, in
/// `tests/fixtures/text/golden_chat_encoding.json`) streamed two characters at a time through
/// a DSML choice: reasoning, content and tool calls as the reference wrote them.
#[test]
fn dsml_choices_split_reasoning_content_and_calls() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/text/golden_chat_encoding.json"
    );
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = golden["completions"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let format = case["format"].as_str().unwrap();
        let dialect = moela_text::ChatFormat::deepseek_by_name(format)
            .and_then(|f| f.dsml_dialect())
            .unwrap();
        let opens = case["opens_reasoning"].as_bool().unwrap();
        let mut c = ChoiceState::with_dsml(0, 0, CompletionParser::new(dialect, opens));
        let chars: Vec<char> = case["completion"].as_str().unwrap().chars().collect();
        let parts: Vec<String> = chars.chunks(2).map(|p| p.iter().collect()).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let (reasoning, content) = feed(&mut c, &parts, FinishReason::Stop);
        let what = format!("{format} {}", case["name"]);
        assert_eq!(
            reasoning,
            case["reasoning"].as_str().unwrap_or(""),
            "{what}"
        );
        assert_eq!(content, case["content"].as_str().unwrap(), "{what}");
        let want = case["tool_calls"].as_array().unwrap();
        assert_eq!(c.calls.len(), want.len(), "{what}");
        for (got, want) in c.calls.iter().zip(want) {
            assert_eq!(got.function.name, want["name"].as_str().unwrap(), "{what}");
            assert_eq!(
                got.function.arguments,
                want["arguments"].as_str().unwrap(),
                "{what}"
            );
        }
        let finish = if want.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        assert_eq!(c.finish, Some(finish), "{what}");
    }
}

/// Feeds constructed model output through a chat choice; returns the streamed pieces.
fn feed(c: &mut ChoiceState, parts: &[&str], reason: FinishReason) -> (String, String) {
    let (mut r, mut t) = (String::new(), String::new());
    for p in parts {
        let piece = c.on_token(token(p), false);
        r.push_str(&piece.reasoning);
        t.push_str(&piece.content);
    }
    let piece = c.on_done("", reason, Usage::default());
    r.push_str(&piece.reasoning);
    t.push_str(&piece.content);
    (r, t)
}

const CALL: &str = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

#[test]
fn reasoning_content_and_tool_calls_are_split_from_constructed_output() {
    let mut c = ChoiceState::new(0, 0, Some(ReasoningParser::new(true)), true);
    // The markup arrives split at awkward places, as tokens would split it.
    let mut parts = vec!["Let me think", "</th", "ink>\n\nSure."];
    let (a, b) = CALL.split_at(CALL.find("tool▁calls▁begin").unwrap());
    parts.push(a);
    parts.push(b);
    let (r, t) = feed(&mut c, &parts, FinishReason::Stop);
    assert_eq!(r, "Let me think");
    assert_eq!(t, "\n\nSure.");
    assert_eq!(c.reasoning_text, "Let me think");
    assert_eq!(c.content, "\n\nSure.");
    assert_eq!(c.finish, Some("tool_calls"));
    let names: Vec<&str> = c.calls.iter().map(|k| k.function.name.as_str()).collect();
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_eq!(c.calls[0].function.arguments, "{\"city\": \"Paris\"}");
    assert!(c.calls[0].id.starts_with("call_") && c.calls[0].id != c.calls[1].id);
}

#[test]
fn finish_reason_is_tool_calls_only_with_calls_and_a_natural_end() {
    // No markup: plain stop.
    let mut c = ChoiceState::new(0, 0, Some(ReasoningParser::new(false)), true);
    feed(&mut c, &["Hello", " there"], FinishReason::Stop);
    assert_eq!(
        (c.finish, c.content.as_str(), c.calls.len()),
        (Some("stop"), "Hello there", 0)
    );
    // Markup cut short by max_tokens: no calls, markup hidden, "length".
    let mut c = ChoiceState::new(0, 0, Some(ReasoningParser::new(false)), true);
    let cut = &CALL[..CALL.find("```<").unwrap()];
    let (_, t) = feed(&mut c, &["Ok ", cut], FinishReason::Length);
    assert_eq!(
        (c.finish, t.as_str(), c.calls.len()),
        (Some("length"), "Ok ", 0)
    );
    // Complete calls but then the budget ran out: the calls, finish "length".
    let mut c = ChoiceState::new(0, 0, None, true);
    feed(&mut c, &[CALL], FinishReason::Length);
    assert_eq!((c.finish, c.calls.len()), (Some("length"), 2));
    // Tools off: the markup is plain content.
    let mut c = ChoiceState::new(0, 0, None, false);
    feed(&mut c, &[CALL], FinishReason::Stop);
    assert_eq!((c.finish, c.content.as_str()), (Some("stop"), CALL));
}

#[test]
fn a_prefix_of_the_markup_is_held_back_then_released() {
    let mut c = ChoiceState::new(0, 0, None, true);
    let p = c.on_token(token("a <｜tool"), false);
    assert_eq!(p.content, "a ");
    let p = c.on_token(token("kit｜>"), false);
    assert_eq!(p.content, "<｜toolkit｜>");
}
