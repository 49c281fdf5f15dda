//! Constrained decoding: grammars (JSON schemas, tool-call markup) turned into per-step token
//! masks by `llguidance`, behind the engine's [`Constraint`] trait.
//!
//! * [`TokenTable`] holds each token's bytes as the model emits them (byte-level BPE undone), the
//!   table both the masks and the logprob strings are read from.
//! * [`Grammars`] compiles a Lark grammar (which may embed `%json {schema}`) into a matcher once
//!   per request; [`CompiledGrammar::constraint`] gives one [`Constraint`] per choice.
//! * The constraint is inactive while the model is inside a reasoning block — the prompt
//!   opened `<think>` (R1's generation prompt) — and applies from the token that completes
//!   `</think>` on. A constraint never lets a non-reasoning prompt open `<think>`.
//! * It reports itself complete once the grammar is satisfied and nothing but whitespace or
//!   the end of sequence could follow, so a JSON object ends at its closing brace.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use moela_engine::Constraint;
use moela_text::{Tokenizer, THINK_CLOSE};

use crate::error::ApiError;

/// Every token's bytes, indexed by id, for ids up to the model's vocabulary size.
#[derive(Debug)]
pub struct TokenTable {
    /// What the token adds to the output: raw bytes for ordinary tokens, the text of added
    /// tokens (`<think>`), nothing for ids the tokenizer does not know (padding rows).
    bytes: Vec<Vec<u8>>,
    /// Added tokens that read as markup (`<｜end▁of▁sentence｜>`, `<think>`): a grammar may only
    /// name them, never spell them out.
    special: Vec<bool>,
}

/// GPT-2's byte-level alphabet: byte `b` is written as `char(table[b])`.
fn byte_level_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        out[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    out
}

impl TokenTable {
    /// Reads the vocabulary of `tokenizer`; `vocab_size` is the model's (its logits' length),
    /// which may exceed the tokenizer's.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> TokenTable {
        let inner = tokenizer.inner();
        let n = vocab_size.max(tokenizer.vocab_size());
        let added = inner.get_added_tokens_decoder();
        let byte_level = inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|s| s.contains("ByteLevel"));
        let mut inverse = std::collections::HashMap::new();
        for (b, c) in byte_level_chars().iter().enumerate() {
            inverse.insert(*c, b as u8);
        }
        let mut bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            if let Some(t) = added.get(&id) {
                let markup = t.special || (t.content.starts_with('<') && t.content.ends_with('>'));
                bytes.push(t.content.as_bytes().to_vec());
                special.push(markup);
                continue;
            }
            let b = match inner.id_to_token(id) {
                None => Vec::new(),
                Some(piece) => {
                    let mapped: Option<Vec<u8>> = if byte_level {
                        piece.chars().map(|c| inverse.get(&c).copied()).collect()
                    } else {
                        None
                    };
                    match mapped {
                        Some(b) => b,
                        None => tokenizer
                            .decode(&[id], false)
                            .map(String::into_bytes)
                            .unwrap_or_default(),
                    }
                }
            };
            bytes.push(b);
            special.push(false);
        }
        TokenTable { bytes, special }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The most bytes of text one token stands for (at least 1): a text of `b` bytes is at
    /// least `b / max_token_bytes` tokens.
    pub fn max_token_bytes(&self) -> usize {
        self.bytes.iter().map(Vec::len).max().unwrap_or(1).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes token `id` adds to the output (empty for unknown ids).
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map_or(&[][..], |b| b.as_slice())
    }

    /// The token as text for logprobs (invalid UTF-8 pieces become U+FFFD).
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    /// The id of a markup token whose text is exactly `text`.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        (0..self.bytes.len())
            .find(|&i| self.special[i] && self.bytes[i] == text.as_bytes())
            .map(|i| i as u32)
    }

    /// The vocabulary as llguidance wants it: markup tokens prefixed with 0xFF.
    fn trie_words(&self) -> Vec<Vec<u8>> {
        self.bytes
            .iter()
            .zip(&self.special)
            .map(|(b, &s)| {
                if s {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(b);
                    w
                } else {
                    b.clone()
                }
            })
            .collect()
    }
}

/// Compiles grammars against one tokenizer.
pub struct Grammars {
    table: Arc<TokenTable>,
    factory: ParserFactory,
    stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab", &self.table.len())
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

impl Grammars {
    /// `stop_ids`: the tokens that end generation (the first is the grammar's end of sequence).
    pub fn new(table: Arc<TokenTable>, stop_ids: &[u32]) -> Result<Grammars, String> {
        let eos = *stop_ids
            .first()
            .ok_or("constrained decoding needs an end-of-sequence token")?;
        if table.is_empty() || eos as usize >= table.len() {
            return Err(format!(
                "end-of-sequence id {eos} is outside the vocabulary"
            ));
        }
        let info = TokRxInfo::new(table.len() as u32, eos);
        let trie = TokTrie::from(&info, &table.trie_words()).with_eos_tokens(stop_ids);
        let env: llguidance::toktrie::TokEnv =
            Arc::new(llguidance::toktrie::ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars {
            table,
            factory,
            stop_ids: stop_ids.to_vec(),
        })
    }

    pub fn table(&self) -> &Arc<TokenTable> {
        &self.table
    }

    /// Compiles a Lark grammar; errors (a bad schema) are the client's, reported in one short
    /// line ([`grammar_error`]). A panic inside llguidance is caught here too.
    pub fn compile(&self, lark: &str, param: &str) -> Result<CompiledGrammar, ApiError> {
        let grammar = TopLevelGrammar::from_lark(lark.to_string());
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory
                .create_parser(grammar)
                .map(|p| Matcher::new(Ok(p)))
        }));
        let matcher = match built {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(grammar_error(param, &e.to_string())),
            Err(_) => return Err(grammar_error(param, "panic")),
        };
        if let Some(e) = matcher.get_error() {
            return Err(grammar_error(param, &e));
        }
        Ok(CompiledGrammar {
            matcher,
            table: self.table.clone(),
            stop_ids: self.stop_ids.clone(),
        })
    }
}

/// The client's error for a grammar llguidance refused: its first line, at most 200 bytes; a
/// panic inside the library (it reports those with a backtrace) becomes a plain statement that
/// the grammar is past the engine's limits.
fn grammar_error(param: &str, msg: &str) -> ApiError {
    let first = msg.lines().next().unwrap_or("").trim();
    let what = if first.starts_with("panic") || msg.contains("<backtrace>") {
        "it is too large or too complex for the constraint engine (e.g. fewer tools or a smaller schema)".to_string()
    } else {
        let mut end = first.len().min(200);
        while !first.is_char_boundary(end) {
            end -= 1;
        }
        first[..end].to_string()
    };
    ApiError::bad(param, format!("cannot use this schema or grammar: {what}"))
}

/// A compiled grammar, ready to hand out constraints.
pub struct CompiledGrammar {
    matcher: Matcher,
    table: Arc<TokenTable>,
    stop_ids: Vec<u32>,
}

impl CompiledGrammar {
    /// A fresh constraint; `opens_reasoning`: the prompt left the model inside `<think>`.
    pub fn constraint(&self, opens_reasoning: bool) -> Box<dyn Constraint> {
        Box::new(GrammarConstraint {
            matcher: self.matcher.deep_clone(),
            table: self.table.clone(),
            stop_ids: self.stop_ids.clone(),
            reasoning: opens_reasoning.then(ThinkWatch::default),
            next_mask: None,
            complete: false,
        })
    }
}

/// Watches reasoning output for `</think>`.
#[derive(Default)]
struct ThinkWatch {
    /// The last bytes seen (a possible start of the closing tag).
    tail: Vec<u8>,
}

impl ThinkWatch {
    /// Adds a token's bytes; true once `</think>` has been written.
    fn push(&mut self, bytes: &[u8]) -> bool {
        self.tail.extend_from_slice(bytes);
        let tag = THINK_CLOSE.as_bytes();
        if self.tail.windows(tag.len()).any(|w| w == tag) {
            return true;
        }
        let keep = tag.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        false
    }
}

struct GrammarConstraint {
    matcher: Matcher,
    table: Arc<TokenTable>,
    stop_ids: Vec<u32>,
    /// `Some` while inside the reasoning block (no constraint there).
    reasoning: Option<ThinkWatch>,
    /// The mask for the next token, when `accept` already computed it.
    next_mask: Option<SimpleVob>,
    complete: bool,
}

impl GrammarConstraint {
    /// Allows only the stop tokens (ends generation).
    fn only_stop(&self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.stop_ids.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
        if let Some(&eos) = self.stop_ids.first() {
            if let Some(l) = logits.get_mut(eos as usize) {
                if !l.is_finite() {
                    *l = 0.0;
                }
            }
        }
    }

    /// Whether `mask` allows nothing but whitespace and stop tokens.
    fn only_space_or_stop(&self, mask: &SimpleVob) -> bool {
        let mut other = false;
        mask.iter_set_entries(|i| {
            let id = i as u32;
            if self.stop_ids.contains(&id) {
                return;
            }
            let b = self.table.bytes(id);
            if b.is_empty() || !b.iter().all(|c| c.is_ascii_whitespace()) {
                other = true;
            }
        });
        !other
    }
}

impl Constraint for GrammarConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        if self.reasoning.is_some() {
            return;
        }
        if self.complete {
            self.only_stop(logits);
            return;
        }
        let mask = match self.next_mask.take() {
            Some(m) => Ok(m),
            None => self.matcher.compute_mask(),
        };
        let Ok(mask) = mask else {
            self.complete = true;
            self.only_stop(logits);
            return;
        };
        let mut any = false;
        for (i, l) in logits.iter_mut().enumerate() {
            if mask.is_allowed(i as u32) && l.is_finite() {
                any = true;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            self.complete = true;
            self.only_stop(logits);
        }
    }

    fn accept(&mut self, token: u32) -> bool {
        if let Some(w) = &mut self.reasoning {
            if w.push(self.table.bytes(token)) {
                self.reasoning = None;
            }
            return true;
        }
        self.next_mask = None;
        if self.complete {
            return self.stop_ids.contains(&token);
        }
        if self.matcher.consume_token(token).is_err() {
            self.complete = true;
            return false;
        }
        if self.matcher.is_stopped() {
            self.complete = true;
            return true;
        }
        if self.matcher.is_accepting().unwrap_or(false) {
            match self.matcher.compute_mask() {
                Ok(m) => {
                    if self.only_space_or_stop(&m) {
                        self.complete = true;
                    }
                    self.next_mask = Some(m);
                }
                Err(_) => self.complete = true,
            }
        }
        true
    }

    fn is_complete(&self) -> bool {
        self.complete
    }
}

/// JSON-compile options added to every schema (unless it brings its own `x-guidance`): between
/// two JSON tokens at most one space, or one newline and up to 32 spaces or tabs of indent (as
/// llama.cpp's JSON grammar), so pretty-printing works but a model cannot pad forever.
pub fn guidance_options() -> serde_json::Value {
    serde_json::json!({
        "whitespace_pattern": "\\x20|\\x0A[\\x20\\x09]{0,32}",
    })
}

/// A Lark grammar as data: the start rule's alternatives and the named rules, rendered to
/// text once, at the end (so grammars are combined by adding rules, not by editing text).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lark {
    start: Vec<String>,
    rules: Vec<(String, String)>,
}

impl Lark {
    /// A grammar whose start is `expr` (a rule name or an expression).
    pub fn start(expr: impl Into<String>) -> Lark {
        Lark {
            start: vec![expr.into()],
            rules: Vec::new(),
        }
    }

    /// Adds `expr` as one more alternative of the start rule.
    pub fn or(mut self, expr: impl Into<String>) -> Lark {
        self.start.push(expr.into());
        self
    }

    /// Adds the rule `name: body`.
    pub fn rule(mut self, name: impl Into<String>, body: impl Into<String>) -> Lark {
        self.rules.push((name.into(), body.into()));
        self
    }

    /// Adds every rule of `rules` (in order).
    pub fn rules(mut self, rules: Vec<(String, String)>) -> Lark {
        self.rules.extend(rules);
        self
    }

    /// The grammar's text: `start: a | b`, then one `name: body` line per rule.
    pub fn render(&self) -> String {
        let mut g = format!("start: {}\n", self.start.join(" | "));
        for (name, body) in &self.rules {
            g.push_str(&format!("{name}: {body}\n"));
        }
        g
    }
}

/// `%json {schema}` with our options merged in; `true`/`{}` accept any JSON value.
pub fn lark_json(schema: &serde_json::Value) -> Result<String, String> {
    let mut schema = match schema {
        serde_json::Value::Bool(true) => serde_json::json!({}),
        serde_json::Value::Object(_) => schema.clone(),
        _ => return Err("a JSON schema must be an object".into()),
    };
    if let serde_json::Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(guidance_options);
    }
    Ok(format!("%json {schema}"))
}

/// A Lark string literal for `text`.
pub fn lark_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A piece of markup in a grammar rule: its token when it is one, else its text.
pub fn lark_markup(table: &TokenTable, text: &str) -> String {
    match table.special_id(text) {
        Some(id) => format!("<[{id}]>"),
        None => lark_str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{tool_call_grammar, CallFormat, ToolSpec};

    fn tokenizer() -> Tokenizer {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/v3");
        Tokenizer::from_dir(&dir).unwrap()
    }

    fn grammars() -> Grammars {
        let table = Arc::new(TokenTable::new(&tokenizer(), 512));
        Grammars::new(table, &[1]).unwrap()
    }

    /// A stand-in model: pseudo-random logits, the best allowed token wins.
    fn walk(c: &mut dyn Constraint, table: &TokenTable, seed: u64, max: usize) -> (Vec<u8>, bool) {
        let mut state = seed;
        let mut out = Vec::new();
        for _ in 0..max {
            let mut logits: Vec<f32> = (0..table.len())
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            c.mask(&mut logits);
            let t = moela_engine::argmax(&logits);
            assert!(logits[t as usize].is_finite(), "the mask allowed nothing");
            assert!(c.accept(t), "token {t} was allowed but not accepted");
            if t == 1 {
                return (out, true);
            }
            out.extend_from_slice(table.bytes(t));
            if c.is_complete() {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn lark_grammars_are_data_rendered_once() {
        let g = Lark::start("answer")
            .or("calls")
            .rule("answer", "%json {}")
            .rules(vec![
                ("calls".into(), "call+".into()),
                ("call".into(), "\"x\"".into()),
            ]);
        assert_eq!(
            g.render(),
            "start: answer | calls\nanswer: %json {}\ncalls: call+\ncall: \"x\"\n"
        );
        assert_eq!(Lark::start("%json {}").render(), "start: %json {}\n");
    }

    #[test]
    fn token_bytes_undo_byte_level_encoding() {
        let tok = tokenizer();
        let table = TokenTable::new(&tok, 512);
        assert_eq!(table.len(), 512);
        let text = "Hello world: ü, 日本, {\"a\": [1, 2]}\n\t";
        let ids = tok.encode(text, false).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| table.bytes(i).to_vec()).collect();
        assert_eq!(bytes, text.as_bytes());
        assert_eq!(table.special_id("<think>"), Some(510));
        assert_eq!(table.special_id(THINK_CLOSE), Some(511));
        assert_eq!(table.special_id("<｜end▁of▁sentence｜>"), Some(1));
        assert_eq!(table.special_id("Hello"), None);
        assert_eq!(table.bytes(100_000), b"");
    }

    #[test]
    fn json_schema_walks_always_end_in_a_matching_value() {
        let g = grammars();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 6},
                "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "tags", "score", "ok"],
            "additionalProperties": false
        });
        let compiled = g
            .compile(&format!("start: {}", lark_json(&schema).unwrap()), "p")
            .unwrap();
        for seed in 0..8 {
            let mut c = compiled.constraint(false);
            let (out, done) = walk(c.as_mut(), g.table(), seed, 400);
            let text = String::from_utf8(out).unwrap();
            assert!(done, "seed {seed}: unfinished {text:?}");
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(v["name"].as_str().unwrap().chars().count() <= 6);
            assert!(v["tags"].as_array().unwrap().len() <= 3);
            assert!((0.0..=1.0).contains(&v["score"].as_f64().unwrap()));
            assert!(v["ok"].is_boolean());
            assert!(
                text.ends_with('}'),
                "complete right after the closing brace: {text:?}"
            );
        }
    }

    #[test]
    fn constraint_waits_for_the_end_of_reasoning() {
        let g = grammars();
        let compiled = g
            .compile(
                &format!(
                    "start: {}",
                    lark_json(&serde_json::json!({"type": "object"})).unwrap()
                ),
                "p",
            )
            .unwrap();
        let mut c = compiled.constraint(true);
        let mut logits = vec![0.0f32; 512];
        c.mask(&mut logits);
        assert!(
            logits.iter().all(|l| l.is_finite()),
            "no mask inside <think>"
        );
        for &t in &tokenizer()
            .encode("I should answer in JSON", false)
            .unwrap()
        {
            assert!(c.accept(t));
        }
        c.mask(&mut logits);
        assert!(logits.iter().all(|l| l.is_finite()));
        assert!(c.accept(511)); // </think>
        c.mask(&mut logits);
        let allowed = logits.iter().filter(|l| l.is_finite()).count();
        assert!(
            allowed > 0 && allowed < 100,
            "{allowed} tokens allowed after </think>"
        );
        let (out, done) = walk(c.as_mut(), g.table(), 7, 400);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !done
                || serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap()
                    .is_object(),
            "{text:?}"
        );
        // Without an open reasoning block the mask applies from the first token.
        let mut c = compiled.constraint(false);
        let mut logits = vec![0.0f32; 512];
        c.mask(&mut logits);
        assert!(
            !logits[510].is_finite(),
            "a constrained answer cannot open <think>"
        );
    }

    #[test]
    fn forced_tool_call_parses_back_to_the_tool() {
        let g = grammars();
        let tools = vec![
            ToolSpec {
                name: "get_weather".into(),
                description: None,
                parameters: serde_json::json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                    "required": ["city"], "additionalProperties": false}),
            },
            ToolSpec {
                name: "get_time".into(),
                description: None,
                parameters: serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}),
            },
        ];
        for format in [CallFormat::V3, CallFormat::V31] {
            for only in [None, Some("get_time")] {
                let rules = tool_call_grammar(&tools, only, false, format, g.table()).unwrap();
                let lark = Lark::start("calls").rules(rules).render();
                let compiled = g.compile(&lark, "tools").unwrap();
                let mut c = compiled.constraint(false);
                let (out, done) = walk(c.as_mut(), g.table(), 3, 600);
                let text = String::from_utf8(out).unwrap();
                assert!(done, "{text:?}");
                let (rest, calls) = moela_text::parse_tool_calls(&text);
                assert_eq!(rest, "");
                assert_eq!(calls.len(), 1, "{text:?}");
                if let Some(n) = only {
                    assert_eq!(calls[0].name, n);
                }
                let args: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
                assert!(args.is_object());
            }
        }
    }

    /// A grammar past llguidance's limits (more than 2^16 symbols trips an assertion inside
    /// it): a short 400, no panic text or backtrace for the client.
    #[test]
    fn grammars_past_the_library_limits_are_short_client_errors() {
        let g = grammars();
        let mut lark = String::from("start: r0");
        for i in 1..70_000 {
            lark.push_str(&format!(" | r{i}"));
        }
        lark.push('\n');
        for i in 0..70_000 {
            lark.push_str(&format!("r{i}: \"w{i}\"\n"));
        }
        let Err(e) = g.compile(&lark, "tools") else {
            panic!("compiled")
        };
        let msg = e.to_string();
        assert!(matches!(e, ApiError::BadRequest { .. }));
        assert!(msg.contains("too large or too complex"), "{msg}");
        assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
        assert!(
            !msg.contains("panicked") && !msg.contains("backtrace") && !msg.contains(".rs:"),
            "{msg}"
        );
    }

    #[test]
    fn bad_schemas_are_client_errors() {
        let g = grammars();
        assert!(lark_json(&serde_json::json!([1])).is_err());
        let e = g.compile(
            "start: %json {\"type\": \"object\", \"properties\": {\"a\": {\"$ref\": \"#/nope\"}}}",
            "response_format",
        );
        assert!(matches!(e, Err(ApiError::BadRequest { .. })));
        assert!(g.compile("start: ???", "response_format").is_err());
    }
}
