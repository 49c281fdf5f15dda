//! Wire types of the OpenAI / DeepSeek API: request bodies as clients send them, their
//! validation into engine terms, and response bodies.
//!
//! Unknown request fields are ignored (clients send many we have no use for); known fields of
//! the wrong type, or out of range, are a 400 naming the field.

use moela_engine::{fill_sampling, SamplingDefaults, SamplingParams};
use moela_text::JsonValue;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Most choices one request may ask for (`n`).
pub const MAX_N: usize = 16;
/// Most stop strings one request may give.
pub const MAX_STOP: usize = 16;
/// Most alternatives per token (`top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaSpec },
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none" | "auto" | "required"` or `{"type": "function", "function": {"name"}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceField {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// A message's `content`: text, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Tool-call arguments: OpenAI sends a JSON string; an object is accepted too.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Arguments {
    Text(String),
    Value(JsonValue),
}

#[derive(Debug, Clone, Deserialize)]
pub struct InFunctionCall {
    pub name: String,
    pub arguments: Arguments,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InToolCall {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: InFunctionCall,
}

/// One message of `messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<InToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// DeepSeek chat-prefix completion: the last assistant message is continued.
    #[serde(default)]
    pub prefix: Option<bool>,
}

/// Sampling and output fields shared by both endpoints. The request structs carry them as
/// their own fields (not `#[serde(flatten)]`, which would lose the field path of a type error).
#[derive(Debug, Clone, Default)]
pub struct CommonFields {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub seed: Option<serde_json::Number>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<ResponseFormat>,
    pub ignore_eos: Option<bool>,
}

/// Declares a request body: its own fields plus every [`CommonFields`] field, and `common()`.
macro_rules! request_body {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            #[serde(default)]
            pub model: Option<String>,
            #[serde(default)]
            pub max_tokens: Option<i64>,
            #[serde(default)]
            pub temperature: Option<f64>,
            #[serde(default)]
            pub top_p: Option<f64>,
            #[serde(default)]
            pub top_k: Option<i64>,
            #[serde(default)]
            pub min_p: Option<f64>,
            #[serde(default)]
            pub seed: Option<serde_json::Number>,
            #[serde(default)]
            pub stop: Option<Stop>,
            #[serde(default)]
            pub n: Option<i64>,
            #[serde(default)]
            pub presence_penalty: Option<f64>,
            #[serde(default)]
            pub frequency_penalty: Option<f64>,
            #[serde(default)]
            pub repetition_penalty: Option<f64>,
            #[serde(default)]
            pub stream: Option<bool>,
            #[serde(default)]
            pub stream_options: Option<StreamOptions>,
            #[serde(default)]
            pub response_format: Option<ResponseFormat>,
            /// vLLM's and llama-server's extension: keep generating past end-of-sequence
            /// tokens (until `max_tokens`, a stop string or the context limit). For benchmarks.
            #[serde(default)]
            pub ignore_eos: Option<bool>,
        }

        impl $name {
            pub fn common(&self) -> CommonFields {
                CommonFields {
                    model: self.model.clone(),
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    seed: self.seed.clone(),
                    stop: self.stop.clone(),
                    n: self.n,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    repetition_penalty: self.repetition_penalty,
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    response_format: self.response_format.clone(),
                    ignore_eos: self.ignore_eos,
                }
            }
        }
    };
}

request_body! {
    /// `POST /v1/chat/completions`.
    ChatRequest {
        messages: Vec<InMessage>,
        #[serde(default)]
        max_completion_tokens: Option<i64>,
        #[serde(default)]
        logprobs: Option<bool>,
        #[serde(default)]
        top_logprobs: Option<i64>,
        /// Kept in the client's key order: the template may print them.
        #[serde(default)]
        tools: Option<Vec<JsonValue>>,
        #[serde(default)]
        tool_choice: Option<ToolChoiceField>,
        #[serde(default)]
        parallel_tool_calls: Option<bool>,
        /// DeepSeek's API switch: `{"type": "enabled" | "disabled"}` (thinking mode).
        #[serde(default)]
        thinking: Option<ThinkingField>,
        /// DeepSeek V4's reasoning effort (`low`, `high`, `max`, …; `none` turns thinking off).
        #[serde(default)]
        reasoning_effort: Option<String>,
        /// Extra variables for the chat template or encoder (vLLM's field), e.g.
        /// `{"thinking": true}`.
        #[serde(default)]
        chat_template_kwargs: Option<JsonValue>,
    }
}

/// `thinking` of a chat request, as DeepSeek's API takes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ThinkingField {
    #[serde(rename = "type")]
    pub kind: String,
}

/// `prompt` of `/v1/completions`: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

request_body! {
    /// `POST /v1/completions`.
    CompletionRequest {
        prompt: PromptField,
        /// Number of alternatives per token (0–20); `None`: no logprobs.
        #[serde(default)]
        logprobs: Option<i64>,
        #[serde(default)]
        echo: Option<bool>,
        #[serde(default)]
        best_of: Option<i64>,
        #[serde(default)]
        suffix: Option<String>,
    }
}

/// The validated, engine-facing form of the shared fields.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// `None`: until the context is full.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// End-of-sequence tokens do not end generation.
    pub ignore_eos: bool,
}

fn check_range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x as f32)),
        Some(x) => Err(ApiError::bad(
            name,
            format!("{name} must be between {lo} and {hi}, got {x}"),
        )),
    }
}

/// A positive count: `max_tokens`, `n`.
pub fn check_count(name: &str, v: Option<i64>, max: usize) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x >= 1 && (x as u64) <= max as u64 => Ok(Some(x as usize)),
        Some(x) if x < 1 => Err(ApiError::bad(
            name,
            format!("{name} must be at least 1, got {x}"),
        )),
        Some(x) => Err(ApiError::bad(
            name,
            format!("{name} must be at most {max}, got {x}"),
        )),
    }
}

impl CommonFields {
    /// Checks every shared field; `max_tokens` is given separately (chat has two spellings).
    /// Sampling values the request leaves out come from the model's recommendation
    /// (`defaults`), else OpenAI's defaults (temperature 1, everything else off).
    pub fn validate(
        &self,
        max_tokens: Option<i64>,
        max_tokens_name: &str,
        defaults: &SamplingDefaults,
    ) -> Result<GenParams, ApiError> {
        let max_tokens = check_count(max_tokens_name, max_tokens, usize::MAX >> 1)?;
        let n = check_count("n", self.n, MAX_N)?.unwrap_or(1);
        let mut explicit = SamplingDefaults {
            temperature: check_range("temperature", self.temperature, 0.0, 2.0)?,
            min_p: check_range("min_p", self.min_p, 0.0, 1.0)?,
            ..Default::default()
        };
        if let Some(p) = self.top_p {
            if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                return Err(ApiError::bad(
                    "top_p",
                    format!("top_p must be in (0, 1], got {p}"),
                ));
            }
            explicit.top_p = Some(p as f32);
        }
        match self.top_k {
            None => {}
            Some(-1) | Some(0) => explicit.top_k = Some(0),
            Some(k) if k > 0 => explicit.top_k = Some(k.min(u32::MAX as i64) as usize),
            Some(k) => {
                return Err(ApiError::bad(
                    "top_k",
                    format!("top_k must be -1, 0 (off) or positive, got {k}"),
                ))
            }
        }
        if let Some(p) = self.repetition_penalty {
            if !(p.is_finite() && p > 0.0 && p <= 10.0) {
                return Err(ApiError::bad(
                    "repetition_penalty",
                    format!("repetition_penalty must be in (0, 10], got {p}"),
                ));
            }
            explicit.repetition_penalty = Some(p as f32);
        }
        // OpenAI's default temperature is 1; an explicit 0 is greedy.
        let base = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut sampling = fill_sampling(defaults, &explicit, base);
        if let Some(p) = check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)? {
            sampling.presence_penalty = p;
        }
        if let Some(p) = check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)? {
            sampling.frequency_penalty = p;
        }
        if let Some(s) = &self.seed {
            // Any JSON integer: negative ones keep their two's-complement bits.
            let seed = s
                .as_u64()
                .or_else(|| s.as_i64().map(|i| i as u64))
                .ok_or_else(|| {
                    ApiError::bad("seed", format!("seed must be an integer, got {s}"))
                })?;
            sampling.seed = Some(seed);
        }
        sampling.validate().map_err(ApiError::invalid)?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::bad(
                "stop",
                format!(
                    "at most {MAX_STOP} stop sequences are allowed, got {}",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad("stop", "stop sequences must not be empty"));
        }
        let stream = self.stream.unwrap_or(false);
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::bad(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        Ok(GenParams {
            max_tokens,
            sampling,
            stop,
            n,
            stream,
            include_usage,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

// ---------------------------------------------------------------- responses

/// Log-probability of one alternative (chat format).
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Log-probability of one generated token (chat format).
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobOut>,
}

/// Legacy completions logprobs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

/// A tool call in a stream delta (carries its position).
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(flatten)]
    pub call: ToolCallOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: usize,
}

/// Cost of one request under the configured price table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostOut {
    pub currency: String,
    pub input_cache_hit: f64,
    pub input_cache_miss: f64,
    pub output: f64,
    pub total: f64,
    /// The discount applied (0 outside off-peak windows).
    pub discount: f64,
}

/// `usage`, OpenAI fields plus DeepSeek's cache split and the optional cost.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct UsageOut {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_cache_hit_tokens: usize,
    pub prompt_cache_miss_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostOut>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageOut,
}

/// What changed in one streamed chunk of a choice.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChunkChoice>,
    /// `null` on every chunk but the last when usage was asked for; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
}
