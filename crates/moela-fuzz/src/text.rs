//! Text surfaces: tokenizer_config.json with its chat templates (and DeepSeek's own encoders),
//! and the streaming output path (detokenizer, reasoning, tool-call and DSML parsers).

use std::sync::OnceLock;

use moela_server::ToolSplitter;
use moela_text::{
    parse_completion, parse_dsml_tool_calls, parse_tool_calls, prompt_opens_reasoning,
    split_reasoning, ChatFormat, ChatMessage, ChatTemplate, CompletionParser, DsmlDialect,
    JsonValue, ReasoningParser, RenderOptions, SpecialTokens, Tokenizer,
};

use crate::parts;

/// A word-level tokenizer.json that knows DeepSeek's special tokens, so that the fixtures'
/// tokenizer_config.json files resolve their BOS/EOS against it; building it costs microseconds,
/// where the fixture tokenizer.json would cost a parse of 22 KB per input.
const TINY_TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<｜begin▁of▁sentence｜>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<｜end▁of▁sentence｜>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "<｜User｜>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
    {"id": 3, "content": "<｜Assistant｜>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
    {"id": 4, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
    {"id": 5, "content": "</think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {
      "<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1, "<｜User｜>": 2,
      "<｜Assistant｜>": 3, "<think>": 4, "</think>": 5, "<unk>": 6, "<s>": 7, "</s>": 8,
      "<|endoftext|>": 9, "<|im_end|>": 10, "hello": 11
    },
    "unk_token": "<unk>"
  }
}"#;

/// The conversation rendered when the input has no (valid) messages part.
const DEFAULT_MESSAGES: &str = r#"[
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Weather in Paris?"},
  {"role": "assistant", "content": null, "reasoning_content": "Call the tool.",
   "tool_calls": [{"id": "c1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
  {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"},
  {"role": "assistant", "content": "21 °C."},
  {"role": "user", "content": "Thanks"}
]"#;

fn options(bytes: &[u8]) -> RenderOptions {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(bytes)
    else {
        return RenderOptions {
            add_generation_prompt: true,
            ..Default::default()
        };
    };
    RenderOptions {
        add_generation_prompt: o
            .get("add_generation_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        tools: o
            .get("tools")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().cloned().map(JsonValue::from).collect()),
        thinking: o.get("thinking").and_then(|v| v.as_bool()),
        reasoning_effort: o
            .get("reasoning_effort")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        extra: o
            .get("extra")
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), JsonValue::from(v.clone())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Parts: `tokenizer_config.json`, the messages (OpenAI JSON), the render options (JSON:
/// `add_generation_prompt`, `tools`, `thinking`, `reasoning_effort`, `extra`) and optionally a
/// `chat_template.jinja`. The config is loaded as the server loads it (templates compiled) and
/// every template it names is rendered, and so are the DeepSeek V3.2 / V4 / V4.1 encoders and
/// the separate template.
pub fn chat_template(data: &[u8]) {
    let p = parts(data);
    let messages: Vec<ChatMessage> = p
        .get(1)
        .and_then(|m| serde_json::from_slice(m).ok())
        .unwrap_or_else(|| serde_json::from_str(DEFAULT_MESSAGES).unwrap_or_default());
    let opts = options(p.get(2).copied().unwrap_or_default());
    if let Ok(cfg) = std::str::from_utf8(p[0]) {
        if let Ok(tok) = Tokenizer::from_json_str(TINY_TOKENIZER_JSON, Some(cfg)) {
            let _ = tok.apply_chat_template(&messages, &opts);
            for name in ["default", "tool_use", "rag"] {
                if let Some(t) = tok.chat_template_named(name) {
                    let _ = t.render(&messages, &opts);
                }
            }
        }
    }
    for name in ["deepseek_v32", "deepseek_v4", "deepseek_v41"] {
        if let Some(f) = ChatFormat::deepseek_by_name(name) {
            if let Ok(text) = f.render(&messages, &opts) {
                let _ = prompt_opens_reasoning(&text);
            }
        }
    }
    if let Some(Ok(source)) = p.get(3).map(|t| std::str::from_utf8(t)) {
        let special = SpecialTokens {
            bos_token: Some("<｜begin▁of▁sentence｜>".into()),
            eos_token: Some("<｜end▁of▁sentence｜>".into()),
            ..Default::default()
        };
        if let Ok(t) = ChatTemplate::new(source, special) {
            let _ = t.render(&messages, &opts);
        }
    }
}

/// The fixture tokenizer (a byte-level BPE like DeepSeek's), built once.
fn fixture_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = include_str!("../../../tests/fixtures/models/v3/tokenizer.json");
        Tokenizer::from_json_str(json, None).expect("the fixture tokenizer loads")
    })
}

/// The text pieces of a stream input: decoded from token ids through [`StreamDecoder`]
/// (checked against decoding all ids at once), or the raw text cut every `chunk` characters.
///
/// [`StreamDecoder`]: moela_text::StreamDecoder
fn stream_pieces(flags: u8, rest: &[u8]) -> Vec<String> {
    let skip_special = flags & 2 != 0;
    if flags & 4 != 0 {
        let tok = fixture_tokenizer();
        // Ids wrap a little past the vocabulary, so unknown ids are fed too.
        let limit = tok.vocab_size() as u32 + 4;
        let ids: Vec<u32> = rest
            .chunks(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])) % limit)
            .collect();
        let mut dec = tok.stream_decoder(skip_special);
        let mut pieces = Vec::with_capacity(ids.len() + 1);
        let mut ok = true;
        for &id in &ids {
            match dec.push(id) {
                Ok(s) => pieces.push(s),
                Err(_) => ok = false,
            }
        }
        match dec.finish() {
            Ok(s) => pieces.push(s),
            Err(_) => ok = false,
        }
        if let (true, Ok(whole)) = (ok, tok.decode(&ids, skip_special)) {
            assert_eq!(
                pieces.concat(),
                whole,
                "streamed text differs from decode of {ids:?}"
            );
        }
        pieces
    } else {
        let text = String::from_utf8_lossy(rest);
        let chunk = usize::from(flags >> 4) + 1;
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(chunk).map(|c| c.iter().collect()).collect()
    }
}

/// Byte 0: flags (bit 0: the prompt opened `<think>`; bit 1: skip special tokens; bit 2: the
/// rest is little-endian u16 token ids, else text; bits 4–7: text piece size − 1 in characters).
/// The pieces go through every streaming parser, each checked against its whole-text form as
/// documented: [`ReasoningParser`] = [`split_reasoning`], [`ToolSplitter`] =
/// [`parse_tool_calls`], [`CompletionParser`] = [`parse_completion`] in each DSML dialect.
pub fn stream(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let started = flags & 1 != 0;
    let pieces = stream_pieces(flags, rest);
    let whole = pieces.concat();
    let _ = prompt_opens_reasoning(&whole);

    let mut rp = ReasoningParser::new(started);
    let (mut reasoning, mut content) = (String::new(), String::new());
    for piece in &pieces {
        let (r, c) = rp.push(piece);
        reasoning += &r;
        content += &c;
    }
    let (r, c) = rp.finish();
    reasoning += &r;
    content += &c;
    let (want_reasoning, want_content) = split_reasoning(&whole, started);
    assert_eq!(rp.saw_reasoning(), want_reasoning.is_some(), "{whole:?}");
    assert_eq!(reasoning, want_reasoning.unwrap_or_default(), "{whole:?}");
    assert_eq!(content, want_content, "{whole:?}");

    let mut ts = ToolSplitter::default();
    let mut shown: String = pieces.iter().map(|p| ts.push(p)).collect();
    let (rest_text, calls) = ts.finish();
    shown += &rest_text;
    assert_eq!((shown, calls), parse_tool_calls(&whole), "{whole:?}");

    for dialect in [DsmlDialect::V32, DsmlDialect::V4, DsmlDialect::V41] {
        let _ = parse_dsml_tool_calls(&whole, dialect);
        let mut cp = CompletionParser::new(dialect, started);
        let (mut reasoning, mut content) = (String::new(), String::new());
        for piece in &pieces {
            let d = cp.push(piece);
            reasoning += &d.reasoning;
            content += &d.content;
        }
        let finished = cp.finish();
        let saw = cp.saw_reasoning();
        let streamed = finished.map(|(d, calls)| {
            (
                saw.then(|| reasoning + &d.reasoning),
                content + &d.content,
                calls,
            )
        });
        let at_once = parse_completion(&whole, dialect, started)
            .map(|p| (p.reasoning, p.content, p.tool_calls));
        match (streamed, at_once) {
            (Ok(s), Ok(w)) => assert_eq!(s, w, "{dialect:?} {whole:?}"),
            (Err(_), Err(_)) => {}
            (s, w) => panic!("{dialect:?} {whole:?}: streamed {s:?}, whole {w:?}"),
        }
    }
}
