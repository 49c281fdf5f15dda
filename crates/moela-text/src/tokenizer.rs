//! `Tokenizer`: a `tokenizers` tokenizer plus what `tokenizer_config.json` adds to it
//! (BOS/EOS, `add_bos_token`, chat templates).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::chat_format::ChatFormat;
use crate::error::{Result, TextError};
use crate::reasoning::prompt_opens_reasoning;
use crate::stream::StreamDecoder;
use crate::template::{ChatMessage, ChatTemplate, RenderOptions, SpecialTokens};

/// Name of the template used when the checkpoint ships several (`chat_template` as a list).
pub const DEFAULT_TEMPLATE_NAME: &str = "default";

/// A loaded tokenizer. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    tok: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    /// `eos` first, then any further stop ids (generation_config.json), without duplicates.
    eos_ids: Vec<u32>,
    /// `add_bos_token` / `add_eos_token` from tokenizer_config.json.
    add_bos: bool,
    add_eos: bool,
    /// Whether tokenizer.json's post-processor already adds BOS / EOS.
    post_processor_adds_bos: bool,
    post_processor_adds_eos: bool,
    default_template: Option<ChatTemplate>,
    named_templates: Vec<(String, ChatTemplate)>,
    /// What `apply_chat_template` uses: the default template unless set otherwise.
    chat_format: Option<ChatFormat>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.bos)
            .field("eos_ids", &self.inner.eos_ids)
            .field("add_bos", &self.inner.add_bos)
            .field("has_chat_template", &self.inner.default_template.is_some())
            .field(
                "chat_format",
                &self.inner.chat_format.as_ref().map(ChatFormat::name),
            )
            .finish()
    }
}

/// A rendered chat prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatPrompt {
    /// The template's output.
    pub text: String,
    /// `text` encoded without adding special tokens (the template writes BOS itself).
    pub ids: Vec<u32>,
    /// The prompt leaves the model inside `<think>` (R1): start a
    /// [`ReasoningParser`](crate::ReasoningParser) with `true`.
    pub opens_reasoning: bool,
}

/// What tokenizer_config.json says, parsed.
#[derive(Default)]
struct TokenizerConfig {
    add_bos: bool,
    add_eos: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
    /// (name, source); the unnamed string form is stored as "default".
    templates: Vec<(String, String)>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json`, `chat_template.jinja`
    /// (which replaces the config's default template, as in transformers) and
    /// `generation_config.json` (its `eos_token_id`, a number or a list, adds stop ids).
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let tok_path = dir.join("tokenizer.json");
        let tok_json = read_to_string(&tok_path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg_json = read_optional(&cfg_path)?;
        let tpl_path = dir.join("chat_template.jinja");
        let tpl_file = read_optional(&tpl_path)?;
        let gen_path = dir.join("generation_config.json");
        let gen_json = read_optional(&gen_path)?;

        let mut config = match &cfg_json {
            Some(text) => parse_config(text, &cfg_path.display().to_string())?,
            None => TokenizerConfig::default(),
        };
        if let Some(source) = tpl_file {
            config
                .templates
                .retain(|(name, _)| name != DEFAULT_TEMPLATE_NAME);
            config
                .templates
                .insert(0, (DEFAULT_TEMPLATE_NAME.to_string(), source));
        }
        let extra_eos = match &gen_json {
            Some(text) => parse_generation_eos(text, &gen_path.display().to_string())?,
            None => Vec::new(),
        };
        Self::build(
            &tok_json,
            &tok_path.display().to_string(),
            config,
            &cfg_path.display().to_string(),
            &extra_eos,
        )
    }

    /// Builds a tokenizer from the text of `tokenizer.json` and, optionally, of
    /// `tokenizer_config.json` (for GGUF files, synthesize the latter from the metadata).
    pub fn from_json_str(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
    ) -> Result<Tokenizer> {
        let config = match tokenizer_config_json {
            Some(text) => parse_config(text, "tokenizer_config.json")?,
            None => TokenizerConfig::default(),
        };
        Self::build(
            tokenizer_json,
            "tokenizer.json",
            config,
            "tokenizer_config.json",
            &[],
        )
    }

    fn build(
        tokenizer_json: &str,
        tok_name: &str,
        config: TokenizerConfig,
        cfg_name: &str,
        extra_eos: &[u32],
    ) -> Result<Tokenizer> {
        // Parse as JSON first so that a syntax error reports line and column.
        let _: serde::de::IgnoredAny =
            serde_json::from_str(tokenizer_json).map_err(|e| TextError::Json {
                source_name: tok_name.to_string(),
                message: e.to_string(),
            })?;
        let mut tok: tokenizers::Tokenizer =
            tokenizer_json.parse().map_err(|e| TextError::Tokenizer {
                source_name: tok_name.to_string(),
                message: format!("{e}"),
            })?;
        // A tokenizer.json may carry truncation/padding settings; transformers applies them only
        // when asked per call, and so do we (never).
        tok.with_truncation(None)
            .map_err(|e| TextError::Tokenizer {
                source_name: tok_name.to_string(),
                message: format!("{e}"),
            })?
            .with_padding(None);

        let lookup = |token: &Option<String>, field: &str| -> Result<Option<u32>> {
            match token {
                None => Ok(None),
                Some(t) => tok
                    .token_to_id(t)
                    .map(Some)
                    .ok_or_else(|| TextError::Config {
                        source_name: cfg_name.to_string(),
                        message: format!("{field} {t:?} is not in the tokenizer's vocabulary"),
                    }),
            }
        };
        let bos = lookup(&config.bos_token, "bos_token")?;
        let eos = lookup(&config.eos_token, "eos_token")?;
        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        for &id in extra_eos {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }

        // What the post-processor adds on its own: look at the ids of the empty string.
        let probe = tok
            .encode("", true)
            .map_err(|e| TextError::Tokenizer {
                source_name: tok_name.to_string(),
                message: format!("encoding the empty string failed: {e}"),
            })?
            .get_ids()
            .to_vec();
        let post_processor_adds_bos = bos.is_some() && probe.first().copied() == bos;
        let post_processor_adds_eos = eos.is_some() && probe.last().copied() == eos;

        let special = SpecialTokens {
            bos_token: config.bos_token.clone(),
            eos_token: config.eos_token.clone(),
            pad_token: config.pad_token.clone(),
            unk_token: config.unk_token.clone(),
        };
        let mut default_template = None;
        let mut named_templates = Vec::new();
        for (name, source) in config.templates {
            let label = format!("{name:?} from {cfg_name}");
            let template = ChatTemplate::with_name(source, special.clone(), &label)?;
            if name == DEFAULT_TEMPLATE_NAME && default_template.is_none() {
                default_template = Some(template.clone());
            }
            named_templates.push((name, template));
        }

        Ok(Tokenizer {
            inner: Arc::new(Inner {
                tok,
                bos,
                eos,
                eos_ids,
                add_bos: config.add_bos,
                add_eos: config.add_eos,
                post_processor_adds_bos,
                post_processor_adds_eos,
                chat_format: default_template.clone().map(ChatFormat::Jinja),
                default_template,
                named_templates,
            }),
        })
    }

    /// Adds stop ids (e.g. from a GGUF file or a CLI flag) to [`Tokenizer::eos_ids`].
    pub fn with_extra_eos_ids(mut self, ids: &[u32]) -> Tokenizer {
        let inner = Arc::make_mut(&mut self.inner);
        for &id in ids {
            if !inner.eos_ids.contains(&id) {
                inner.eos_ids.push(id);
            }
        }
        self
    }

    /// Uses `format` for [`Tokenizer::apply_chat_template`] instead of the checkpoint's default
    /// template, e.g. [`ChatFormat::DeepseekV32`] for a model that ships no template.
    /// [`Tokenizer::chat_template`] still returns the checkpoint's template.
    pub fn with_chat_format(mut self, format: ChatFormat) -> Tokenizer {
        Arc::make_mut(&mut self.inner).chat_format = Some(format);
        self
    }

    /// Text to ids. With `add_special_tokens`, the tokenizer's own rules apply: tokenizer.json's
    /// post-processor, then BOS (EOS) when tokenizer_config.json says `add_bos_token`
    /// (`add_eos_token`) and the post-processor did not add it (DeepSeek V2: BOS added here;
    /// V3/R1: nothing added). Added tokens written in the text (`<｜User｜>`) map to their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let inner = &*self.inner;
        let encoding = inner
            .tok
            .encode(text, add_special_tokens)
            .map_err(|e| TextError::Encode(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special_tokens {
            if let (true, false, Some(bos)) =
                (inner.add_bos, inner.post_processor_adds_bos, inner.bos)
            {
                ids.insert(0, bos);
            }
            if let (true, false, Some(eos)) =
                (inner.add_eos, inner.post_processor_adds_eos, inner.eos)
            {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Ids to text. Ids the tokenizer does not know are skipped (as the reference does);
    /// bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| TextError::Decode(e.to_string()))
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special_tokens)
    }

    /// The BOS id named by tokenizer_config.json, if any.
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// The EOS id named by tokenizer_config.json, if any.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    /// Every id that ends generation: the EOS id first, then generation_config.json's and any
    /// added with [`Tokenizer::with_extra_eos_ids`].
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// Whether tokenizer_config.json asks for a BOS on `encode(.., true)`.
    pub fn adds_bos(&self) -> bool {
        self.inner.add_bos || self.inner.post_processor_adds_bos
    }

    /// The id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// The token string of an id (byte-level form, e.g. `Ġworld`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// Number of ids the tokenizer knows, added tokens included (V3: 128815). The model's
    /// embedding can be larger (V3: 129280 rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.tok.get_vocab_size(true)
    }

    /// The checkpoint's default chat template.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.default_template.as_ref()
    }

    /// A named chat template (list form of `chat_template`, e.g. `"tool_use"`).
    pub fn chat_template_named(&self, name: &str) -> Option<&ChatTemplate> {
        self.inner
            .named_templates
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    /// How [`Tokenizer::apply_chat_template`] renders: the checkpoint's default template as a
    /// [`ChatFormat::Jinja`], or what [`Tokenizer::with_chat_format`] set.
    pub fn chat_format(&self) -> Option<&ChatFormat> {
        self.inner.chat_format.as_ref()
    }

    /// Renders `messages` with the [`Tokenizer::chat_format`] and encodes the text as
    /// transformers' `apply_chat_template(tokenize=True)` does (`add_special_tokens = false`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        opts: &RenderOptions,
    ) -> Result<ChatPrompt> {
        let format = self.chat_format().ok_or(TextError::NoChatTemplate)?;
        let text = format.render(messages, opts)?;
        let ids = self.encode(&text, false)?;
        let opens_reasoning = prompt_opens_reasoning(&text);
        Ok(ChatPrompt {
            text,
            ids,
            opens_reasoning,
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TextError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_object(text: &str, source_name: &str) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_str(text).map_err(|e| TextError::Json {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(TextError::Config {
            source_name: source_name.to_string(),
            message: format!("expected a JSON object, found {}", kind(&other)),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_config(text: &str, source_name: &str) -> Result<TokenizerConfig> {
    let map = parse_object(text, source_name)?;
    let bad = |message: String| TextError::Config {
        source_name: source_name.to_string(),
        message,
    };
    let flag = |key: &str| -> Result<bool> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(format!(
                "{key}: expected a boolean, found {}",
                kind(other)
            ))),
        }
    };
    // Special tokens are a string or an AddedToken object {"content": ...}.
    let token = |key: &str| -> Result<Option<String>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(bad(format!(
                    "{key}: an object here needs a string \"content\""
                ))),
            },
            Some(other) => Err(bad(format!(
                "{key}: expected a string or an object with \"content\", found {}",
                kind(other)
            ))),
        }
    };
    let templates = match map.get("chat_template") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![(DEFAULT_TEMPLATE_NAME.to_string(), s.clone())],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => out.push((n.to_string(), t.to_string())),
                    _ => {
                        return Err(bad(format!(
                        "chat_template[{i}]: expected {{\"name\": string, \"template\": string}}"
                    )))
                    }
                }
            }
            out
        }
        Some(other) => {
            return Err(bad(format!(
                "chat_template: expected a string or a list of named templates, found {}",
                kind(other)
            )))
        }
    };
    Ok(TokenizerConfig {
        add_bos: flag("add_bos_token")?,
        add_eos: flag("add_eos_token")?,
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
        pad_token: token("pad_token")?,
        unk_token: token("unk_token")?,
        templates,
    })
}

fn parse_generation_eos(text: &str, source_name: &str) -> Result<Vec<u32>> {
    let map = parse_object(text, source_name)?;
    let bad = || TextError::Config {
        source_name: source_name.to_string(),
        message: "eos_token_id: expected a token id or a list of token ids".to_string(),
    };
    let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match map.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| as_id(v).ok_or_else(bad)).collect(),
        Some(v) => as_id(v).map(|id| vec![id]).ok_or_else(bad),
    }
}
