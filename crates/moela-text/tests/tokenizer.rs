//! Tokenizer against the Python reference (tests/fixtures/text/golden_tokenizer.json, written by
//! tools/make_text_fixtures.py) and the published vectors of deepseek-architecture.md §7.

mod common;

use moela_text::{TextError, Tokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    bos_token: String,
    eos_token: String,
    bos_id: u32,
    eos_id: u32,
    vocab_size: usize,
    token_to_id: Vec<(String, Option<u32>)>,
    id_to_token: Vec<(u32, Option<String>)>,
    encode: Vec<EncodeCase>,
    decode: Vec<DecodeCase>,
    bos_variants: Vec<BosVariant>,
}

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    ids_special: Vec<u32>,
    ids_plain: Vec<u32>,
    decode: String,
    decode_skip_special: String,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    skip_special_tokens: bool,
    text: String,
}

#[derive(Deserialize)]
struct BosVariant {
    name: String,
    config_patch: serde_json::Map<String, serde_json::Value>,
    post_processor: Option<serde_json::Value>,
    reference: String,
    cases: Vec<BosCase>,
}

#[derive(Deserialize)]
struct BosCase {
    text: String,
    ids_special: Vec<u32>,
    ids_plain: Vec<u32>,
}

fn golden() -> Golden {
    serde_json::from_str(&common::read_fixture("golden_tokenizer.json"))
        .expect("golden_tokenizer.json parses")
}

#[test]
fn published_vectors() {
    // deepseek-architecture.md §7
    let tok = common::v3();
    let vectors: [(&str, &[u32]); 3] = [
        ("Hello world", &[19923, 2058]),
        ("12345678", &[6895, 18009, 2597]),
        (
            "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜><think>\n",
            &[0, 128803, 19923, 128804, 128798, 201],
        ),
    ];
    for (text, ids) in vectors {
        assert_eq!(tok.encode(text, true).unwrap(), ids, "{text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), ids, "{text:?}");
    }
}

#[test]
fn encode_decode_match_reference() {
    let tok = common::v3();
    let g = golden();
    for case in &g.encode {
        let t = &case.text;
        assert_eq!(
            tok.encode(t, true).unwrap(),
            case.ids_special,
            "special {t:?}"
        );
        assert_eq!(tok.encode(t, false).unwrap(), case.ids_plain, "plain {t:?}");
        assert_eq!(
            tok.decode(&case.ids_special, false).unwrap(),
            case.decode,
            "{t:?}"
        );
        assert_eq!(
            tok.decode(&case.ids_special, true).unwrap(),
            case.decode_skip_special,
            "skip {t:?}"
        );
    }
    for case in &g.decode {
        assert_eq!(
            tok.decode(&case.ids, case.skip_special_tokens).unwrap(),
            case.text,
            "{:?} skip={}",
            case.ids,
            case.skip_special_tokens
        );
    }
}

#[test]
fn vocabulary_and_special_ids_match_reference() {
    let tok = common::v3();
    let g = golden();
    assert_eq!(tok.bos_id(), Some(g.bos_id));
    assert_eq!(tok.eos_id(), Some(g.eos_id));
    assert_eq!(tok.eos_ids(), &[g.eos_id]);
    assert_eq!(tok.token_to_id(&g.bos_token), Some(g.bos_id));
    assert_eq!(tok.token_to_id(&g.eos_token), Some(g.eos_id));
    assert_eq!(tok.vocab_size(), g.vocab_size);
    assert!(!tok.adds_bos());
    for (token, id) in &g.token_to_id {
        assert_eq!(tok.token_to_id(token), *id, "{token:?}");
    }
    for (id, token) in &g.id_to_token {
        assert_eq!(tok.id_to_token(*id), *token, "{id}");
    }
}

/// `add_bos_token` / `add_eos_token` and post-processors that already add BOS, against
/// transformers 4.57.1 (LlamaTokenizerFast; the V2-era behaviour) and 5.23 where noted.
#[test]
fn bos_rules_match_reference() {
    let g = golden();
    let base: serde_json::Value = serde_json::from_str(common::v3_tokenizer_config()).unwrap();
    assert_eq!(g.bos_variants.len(), 4);
    for variant in &g.bos_variants {
        let mut config = base.clone();
        for (k, v) in &variant.config_patch {
            config[k] = v.clone();
        }
        let tok_json = match &variant.post_processor {
            None => common::v3_tokenizer_json().to_string(),
            Some(pp) => {
                let mut tj: serde_json::Value =
                    serde_json::from_str(common::v3_tokenizer_json()).unwrap();
                tj["post_processor"] = pp.clone();
                tj.to_string()
            }
        };
        let tok = Tokenizer::from_json_str(&tok_json, Some(&config.to_string())).unwrap();
        for case in &variant.cases {
            let what = format!("{} ({}) {:?}", variant.name, variant.reference, case.text);
            assert_eq!(
                tok.encode(&case.text, true).unwrap(),
                case.ids_special,
                "{what}"
            );
            assert_eq!(
                tok.encode(&case.text, false).unwrap(),
                case.ids_plain,
                "{what}"
            );
        }
    }
}

#[test]
fn corrupt_tokenizer_json_is_an_error_naming_the_problem() {
    let full = common::v3_tokenizer_json();
    let truncated = &full[..full.len() / 2];
    match Tokenizer::from_json_str(truncated, None) {
        Err(TextError::Json {
            source_name,
            message,
        }) => {
            assert_eq!(source_name, "tokenizer.json");
            assert!(message.contains("EOF"), "{message}");
        }
        other => panic!("expected a JSON error, got {other:?}"),
    }

    // Valid JSON, not a tokenizer.
    let err = Tokenizer::from_json_str(r#"{"version": "1.0", "model": 5}"#, None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TextError::Tokenizer { .. }), "{text}");
    assert!(text.starts_with("tokenizer.json: "), "{text}");

    // A merge that names a token missing from the vocabulary.
    let bad_merge = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
        "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
        "vocab":{"a":0,"b":1},"merges":["a zzz"]}}"#;
    let err = Tokenizer::from_json_str(bad_merge, None).unwrap_err();
    assert!(matches!(err, TextError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("zzz"), "{err}");

    // Not JSON at all.
    let err = Tokenizer::from_json_str("\u{0}\u{1}garbage", None).unwrap_err();
    assert!(matches!(err, TextError::Json { .. }), "{err}");
}

#[test]
fn bad_tokenizer_config_is_an_error_naming_the_field() {
    let json = common::v3_tokenizer_json();
    let cases = [
        (r#"{"bos_token": 5}"#, "bos_token"),
        (r#"{"eos_token": {"lstrip": false}}"#, "eos_token"),
        (r#"{"add_bos_token": "yes"}"#, "add_bos_token"),
        (r#"{"chat_template": 3}"#, "chat_template"),
        (
            r#"{"chat_template": [{"name": "default"}]}"#,
            "chat_template[0]",
        ),
        (r#"{"bos_token": "<no-such-token>"}"#, "<no-such-token>"),
        (r#"{"chat_template": "{% if %}"}"#, "does not compile"),
        ("[1, 2]", "expected a JSON object"),
        ("{", "invalid JSON"),
    ];
    for (config, needle) in cases {
        let err = Tokenizer::from_json_str(json, Some(config)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("tokenizer_config.json"), "{config}: {text}");
        assert!(text.contains(needle), "{config}: {text}");
    }
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    let dir = common::temp_dir("missing");
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    let expected_path = dir.join("tokenizer.json");
    match &err {
        TextError::Io { path, source } => {
            assert_eq!(path, &expected_path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(err
        .to_string()
        .contains(&expected_path.display().to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn from_dir_reads_config_template_file_and_generation_config() {
    let dir = common::temp_dir("from-dir");
    std::fs::write(dir.join("tokenizer.json"), common::v3_tokenizer_json()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        common::v3_tokenizer_config(),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let v3_template = common::read_fixture("templates/deepseek-v3.jinja");
    assert_eq!(tok.chat_template().unwrap().source(), v3_template);
    assert_eq!(tok.encode("Hello world", true).unwrap(), [19923, 2058]);

    // chat_template.jinja replaces the config's template (as in transformers); a generation
    // config adds stop ids after the EOS.
    let r1_template = common::read_fixture("templates/deepseek-r1.jinja");
    std::fs::write(dir.join("chat_template.jinja"), &r1_template).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bos_token_id": 0, "eos_token_id": [1, 128805]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.chat_template().unwrap().source(), r1_template);
    assert_eq!(tok.eos_ids(), &[1, 128805]);

    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": "x"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("generation_config.json"), "{err}");
    assert!(err.contains("eos_token_id"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn named_template_list_form() {
    let v3_template = common::read_fixture("templates/deepseek-v3.jinja");
    let r1_template = common::read_fixture("templates/deepseek-r1.jinja");
    let config = serde_json::json!({
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": {"content": "<｜end▁of▁sentence｜>"},
        "chat_template": [
            {"name": "tool_use", "template": r1_template},
            {"name": "default", "template": v3_template},
        ],
    });
    let tok =
        Tokenizer::from_json_str(common::v3_tokenizer_json(), Some(&config.to_string())).unwrap();
    assert_eq!(tok.chat_template().unwrap().source(), v3_template);
    assert_eq!(
        tok.chat_template_named("tool_use").unwrap().source(),
        r1_template
    );
    assert!(tok.chat_template_named("nope").is_none());
    assert_eq!(tok.eos_id(), Some(1));

    let bare = Tokenizer::from_json_str(common::v3_tokenizer_json(), None).unwrap();
    assert!(bare.chat_template().is_none());
    assert_eq!(bare.bos_id(), None);
    assert!(bare.eos_ids().is_empty());
    let bare = bare.with_extra_eos_ids(&[1, 1, 128805]);
    assert_eq!(bare.eos_ids(), &[1, 128805]);
}
