//! Reasoning split and tool-call parsing against the Python reference functions
//! (tests/fixtures/text/golden_parsing.json, written by tools/make_text_fixtures.py).

mod common;

use moela_text::{
    parse_tool_calls, prompt_opens_reasoning, split_reasoning, ParsedToolCall, ReasoningParser,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    reasoning: Vec<ReasoningCase>,
    tool_calls: Vec<ToolCase>,
    prompt_opens_reasoning: Vec<PromptCase>,
}

#[derive(Deserialize)]
struct ReasoningCase {
    text: String,
    started_in_reasoning: bool,
    reasoning: Option<String>,
    content: String,
}

#[derive(Deserialize)]
struct ToolCase {
    text: String,
    content: String,
    calls: Vec<Call>,
}

#[derive(Deserialize)]
struct Call {
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct PromptCase {
    prompt: String,
    opens_reasoning: bool,
}

fn golden() -> Golden {
    serde_json::from_str(&common::read_fixture("golden_parsing.json")).unwrap()
}

#[test]
fn split_reasoning_matches_reference() {
    for case in golden().reasoning {
        let got = split_reasoning(&case.text, case.started_in_reasoning);
        assert_eq!(
            got,
            (case.reasoning.clone(), case.content.clone()),
            "{:?} started={}",
            case.text,
            case.started_in_reasoning
        );
    }
}

/// Runs the streaming parser over `deltas`; returns (saw_reasoning, reasoning, content).
fn run_stream(deltas: &[&str], started: bool) -> (bool, String, String) {
    let mut p = ReasoningParser::new(started);
    let (mut reasoning, mut content) = (String::new(), String::new());
    for d in deltas {
        let (r, c) = p.push(d);
        reasoning.push_str(&r);
        content.push_str(&c);
    }
    let (r, c) = p.finish();
    reasoning.push_str(&r);
    content.push_str(&c);
    (p.saw_reasoning(), reasoning, content)
}

/// Every way of cutting the text into one, two or three deltas, and char-by-char, gives the
/// reference split; so `</think>` (and a leading `<think>`) split across deltas is handled.
#[test]
fn streaming_reasoning_matches_reference_for_every_split() {
    for case in golden().reasoning {
        let want = (
            case.reasoning.is_some(),
            case.reasoning.clone().unwrap_or_default(),
            case.content.clone(),
        );
        let t = case.text.as_str();
        let s = case.started_in_reasoning;
        let bounds: Vec<usize> = (0..=t.len()).filter(|&i| t.is_char_boundary(i)).collect();
        let chars: Vec<&str> = bounds.windows(2).map(|w| &t[w[0]..w[1]]).collect();
        assert_eq!(run_stream(&chars, s), want, "char by char {t:?}");
        assert_eq!(run_stream(&[t], s), want, "whole {t:?}");
        for &i in &bounds {
            assert_eq!(run_stream(&[&t[..i], &t[i..]], s), want, "{t:?} at {i}");
            for &j in bounds.iter().filter(|&&j| j >= i) {
                let parts = [&t[..i], &t[i..j], &t[j..]];
                assert_eq!(run_stream(&parts, s), want, "{t:?} at {i},{j}");
            }
        }
    }
}

#[test]
fn prompt_opens_reasoning_matches_reference() {
    for case in golden().prompt_opens_reasoning {
        assert_eq!(
            prompt_opens_reasoning(&case.prompt),
            case.opens_reasoning,
            "{:?}",
            case.prompt
        );
    }
}

/// The generation prompts the real templates render (golden_templates.json): R1's opens
/// reasoning, V3's does not.
#[test]
fn template_generation_prompts_open_reasoning_only_for_r1() {
    let raw: serde_json::Value =
        serde_json::from_str(&common::read_fixture("golden_templates.json")).unwrap();
    let mut seen = [0usize; 2];
    for case in raw["cases"].as_array().unwrap() {
        let (Some(text), Some(true)) = (
            case["expected"].as_str(),
            case["add_generation_prompt"].as_bool(),
        ) else {
            continue;
        };
        let want = match case["template"].as_str().unwrap() {
            "deepseek-r1.jinja" => text.trim_end().ends_with("<｜Assistant｜><think>"),
            "deepseek-v3.jinja" => false,
            _ => continue,
        };
        assert_eq!(prompt_opens_reasoning(text), want, "{text:?}");
        seen[usize::from(want)] += 1;
    }
    assert!(seen[0] >= 8 && seen[1] >= 6, "{seen:?}");
}

#[test]
fn tool_calls_match_reference() {
    for case in golden().tool_calls {
        let (content, calls) = parse_tool_calls(&case.text);
        let want: Vec<ParsedToolCall> = case
            .calls
            .iter()
            .map(|c| ParsedToolCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect();
        assert_eq!(content, case.content, "{:?}", case.text);
        assert_eq!(calls, want, "{:?}", case.text);
    }
}
