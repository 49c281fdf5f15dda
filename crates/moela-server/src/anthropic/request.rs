//! Anthropic's `POST /v1/messages` body and its mapping onto the chat route's [`ChatRequest`]:
//! the same messages, tools, tool choice, thinking switch and sampling fields in OpenAI's
//! terms, so one planner renders, tokenizes and constrains both.

use std::fmt;
use std::marker::PhantomData;

use moela_text::JsonValue;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::ApiError;
use crate::protocol::{
    Arguments, ChatRequest, Content, InFunctionCall, InMessage, InToolCall, JsonSchemaSpec,
    NamedFunction, ResponseFormat, Stop, ThinkingField, ToolChoiceField,
};

/// A field that is a string or a list of `T` (`system`, `content`, a tool result's `content`).
/// Deserialized by hand so that an error inside the list keeps its path.
#[derive(Debug, Clone)]
pub enum TextOr<T> {
    Text(String),
    List(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = TextOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content blocks")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TextOr<T>, E> {
                Ok(TextOr::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextOr<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(TextOr::List(items))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A text block (`system`, a tool result's content).
#[derive(Debug, Clone, Deserialize)]
pub struct TextBlock {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// One content block of a message. Fields we have no use for (`cache_control`, `citations`,
/// `signature`) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
    },
    RedactedThinking {},
    ToolUse {
        id: String,
        name: String,
        /// Kept in the client's key order: it is printed into the prompt.
        input: JsonValue,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<TextOr<TextBlock>>,
        #[serde(default)]
        is_error: Option<bool>,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct AnthropicMessage {
    pub role: String,
    pub content: TextOr<Block>,
}

/// `thinking`: `{"type": "enabled", "budget_tokens": N}` or `{"type": "disabled"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Thinking {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub budget_tokens: Option<i64>,
}

/// `tool_choice`: `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name": N}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

/// `output_config`: `effort` (DeepSeek V4's reasoning effort) and `format`
/// (`{"type": "json_schema", "schema"}`, enforced by constrained decoding).
#[derive(Debug, Clone, Deserialize)]
pub struct OutputConfig {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub format: Option<OutputFormat>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

/// `POST /v1/messages` (and `/v1/messages/count_tokens`, which ignores the output fields).
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<AnthropicMessage>,
    #[serde(default)]
    pub system: Option<TextOr<TextBlock>>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub thinking: Option<Thinking>,
    /// Kept in the client's key order: the schemas are printed into the prompt.
    #[serde(default)]
    pub tools: Option<Vec<JsonValue>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
}

/// Joins text blocks with newlines; any other block is a 400 naming it.
fn join_text(c: &TextOr<TextBlock>, param: &str) -> Result<String, ApiError> {
    match c {
        TextOr::Text(t) => Ok(t.clone()),
        TextOr::List(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                match (b.kind.as_str(), &b.text) {
                    ("text", Some(t)) => parts.push(t.as_str()),
                    ("text", None) => {
                        return Err(ApiError::bad(
                            format!("{param}[{i}].text"),
                            "a text block needs \"text\"",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::bad(
                            format!("{param}[{i}].type"),
                            format!("only text blocks are supported here, got {other:?}"),
                        ))
                    }
                }
            }
            Ok(parts.join("\n"))
        }
    }
}

fn message(role: &str, content: Option<String>) -> InMessage {
    InMessage {
        role: role.into(),
        content: content.map(Content::Text),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning_content: None,
        prefix: None,
    }
}

/// A user turn: its text blocks as user messages, each tool result as a tool message, in order.
fn user_turn(blocks: &[Block], p: &str, out: &mut Vec<InMessage>) -> Result<(), ApiError> {
    let mut text: Vec<&str> = Vec::new();
    for (k, b) in blocks.iter().enumerate() {
        match b {
            Block::Text { text: t } => text.push(t),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                if !text.is_empty() {
                    out.push(message("user", Some(text.join("\n"))));
                    text.clear();
                }
                let mut result = match content {
                    None => String::new(),
                    Some(c) => join_text(c, &format!("{p}.content[{k}].content"))?,
                };
                if *is_error == Some(true) {
                    result = format!("Error: {result}");
                }
                let mut m = message("tool", Some(result));
                m.tool_call_id = Some(tool_use_id.clone());
                out.push(m);
            }
            Block::Thinking { .. } | Block::RedactedThinking {} | Block::ToolUse { .. } => {
                return Err(ApiError::bad(
                    format!("{p}.content[{k}]"),
                    "a user message may hold text and tool_result blocks only",
                ))
            }
        }
    }
    if !text.is_empty() {
        out.push(message("user", Some(text.join("\n"))));
    }
    Ok(())
}

/// An assistant turn: text, reasoning (thinking blocks) and tool calls in one message.
fn assistant_turn(blocks: &[Block], p: &str) -> Result<InMessage, ApiError> {
    let (mut text, mut thinking, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    for (k, b) in blocks.iter().enumerate() {
        match b {
            Block::Text { text: t } => text.push(t.as_str()),
            Block::Thinking { thinking: t } => thinking.push(t.as_str()),
            Block::RedactedThinking {} => {}
            Block::ToolUse { id, name, input } => calls.push(InToolCall {
                id: Some(id.clone()),
                kind: Some("function".into()),
                function: InFunctionCall {
                    name: name.clone(),
                    arguments: Arguments::Value(input.clone()),
                },
            }),
            Block::ToolResult { .. } => {
                return Err(ApiError::bad(
                    format!("{p}.content[{k}]"),
                    "tool_result blocks belong in user messages",
                ))
            }
        }
    }
    let mut m = message(
        "assistant",
        (!text.is_empty() || calls.is_empty()).then(|| text.join("\n")),
    );
    m.reasoning_content = (!thinking.is_empty()).then(|| thinking.join("\n"));
    m.tool_calls = (!calls.is_empty()).then_some(calls);
    Ok(m)
}

/// One Anthropic tool as an OpenAI function tool (key order kept).
fn function_tool(tool: &JsonValue, i: usize) -> Result<JsonValue, ApiError> {
    let JsonValue::Object(fields) = tool else {
        return Err(ApiError::bad(
            format!("tools[{i}]"),
            "a tool must be an object",
        ));
    };
    let field = |k: &str| fields.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
    match field("type") {
        None | Some(JsonValue::Null) => {}
        Some(JsonValue::String(t)) if t == "custom" => {}
        Some(t) => {
            return Err(ApiError::bad(
                format!("tools[{i}].type"),
                format!("only client tools (type \"custom\") are supported, got {t:?}"),
            ))
        }
    }
    let mut function = Vec::new();
    for (from, to) in [
        ("name", "name"),
        ("description", "description"),
        ("input_schema", "parameters"),
    ] {
        if let Some(v) = field(from) {
            function.push((to.to_string(), v.clone()));
        }
    }
    Ok(JsonValue::Object(vec![
        ("type".into(), JsonValue::String("function".into())),
        ("function".into(), JsonValue::Object(function)),
    ]))
}

impl MessagesRequest {
    /// The chat request this message request means. `counting`: for `count_tokens`, where
    /// `max_tokens` is not needed and a forced tool choice needs no grammar (it renders the
    /// same prompt as `auto`).
    pub fn into_chat(self, counting: bool) -> Result<ChatRequest, ApiError> {
        if !counting && self.max_tokens.is_none() {
            return Err(ApiError::bad("max_tokens", "Field required"));
        }
        if let Some(t) = self.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(ApiError::bad(
                "temperature",
                format!("temperature must be between 0 and 1, got {t}"),
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            messages.push(message("system", Some(join_text(s, "system")?)));
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad("messages", "messages must not be empty"));
        }
        let last = self.messages.len() - 1;
        for (i, m) in self.messages.iter().enumerate() {
            let p = format!("messages[{i}]");
            let blocks = match &m.content {
                TextOr::Text(t) => vec![Block::Text { text: t.clone() }],
                TextOr::List(b) => b.clone(),
            };
            match m.role.as_str() {
                "user" => user_turn(&blocks, &p, &mut messages)?,
                "assistant" => {
                    let mut a = assistant_turn(&blocks, &p)?;
                    // A last assistant message is continued (Anthropic's prefill).
                    a.prefix = (i == last).then_some(true);
                    messages.push(a);
                }
                other => {
                    return Err(ApiError::bad(
                        format!("{p}.role"),
                        format!("role must be \"user\" or \"assistant\", got {other:?}"),
                    ))
                }
            }
        }
        let thinking = match &self.thinking {
            // `adaptive`: the model's own default.
            None => None,
            Some(t) if t.kind == "adaptive" => None,
            Some(t) if t.kind == "disabled" => Some("disabled"),
            Some(t) if t.kind == "enabled" => {
                match (t.budget_tokens, self.max_tokens) {
                    (None, _) => {
                        return Err(ApiError::bad(
                            "thinking.budget_tokens",
                            "Field required when thinking is enabled",
                        ))
                    }
                    (Some(b), _) if b < 1 => {
                        return Err(ApiError::bad(
                            "thinking.budget_tokens",
                            format!("budget_tokens must be at least 1, got {b}"),
                        ))
                    }
                    (Some(b), Some(m)) if b >= m => {
                        return Err(ApiError::bad(
                            "thinking.budget_tokens",
                            format!("budget_tokens ({b}) must be less than max_tokens ({m})"),
                        ))
                    }
                    _ => {}
                }
                Some("enabled")
            }
            Some(t) => {
                return Err(ApiError::bad(
                    "thinking.type",
                    format!(
                        "thinking.type must be \"enabled\", \"disabled\" or \"adaptive\", got {:?}",
                        t.kind
                    ),
                ))
            }
        };
        let tools = match &self.tools {
            None => None,
            Some(ts) => Some(
                ts.iter()
                    .enumerate()
                    .map(|(i, t)| function_tool(t, i))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let tool_choice = match &self.tool_choice {
            None => None,
            Some(c) => Some(match (c.kind.as_str(), &c.name) {
                ("auto", _) => ToolChoiceField::Mode("auto".into()),
                ("none", _) => ToolChoiceField::Mode("none".into()),
                (_, _) if counting && matches!(c.kind.as_str(), "any" | "tool") => {
                    ToolChoiceField::Mode("auto".into())
                }
                ("any", _) => ToolChoiceField::Mode("required".into()),
                ("tool", Some(name)) => ToolChoiceField::Named {
                    function: NamedFunction { name: name.clone() },
                },
                ("tool", None) => {
                    return Err(ApiError::bad(
                        "tool_choice.name",
                        "a tool_choice of type \"tool\" needs a name",
                    ))
                }
                (other, _) => {
                    return Err(ApiError::bad(
                        "tool_choice.type",
                        format!(
                            "tool_choice.type must be \"auto\", \"any\", \"tool\" or \"none\", got {other:?}"
                        ),
                    ))
                }
            }),
        };
        let output = self.output_config.as_ref();
        let response_format = match output.and_then(|o| o.format.as_ref()) {
            None => None,
            Some(f) if f.kind == "json_schema" => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchemaSpec {
                    name: None,
                    schema: f.schema.clone(),
                    strict: None,
                },
            }),
            Some(f) => {
                return Err(ApiError::bad(
                    "output_config.format.type",
                    format!(
                        "output_config.format.type must be \"json_schema\", got {:?}",
                        f.kind
                    ),
                ))
            }
        };
        Ok(ChatRequest {
            messages,
            max_completion_tokens: None,
            logprobs: None,
            top_logprobs: None,
            tools,
            tool_choice,
            parallel_tool_calls: self
                .tool_choice
                .as_ref()
                .and_then(|c| c.disable_parallel_tool_use)
                .map(|d| !d),
            thinking: thinking.map(|k| ThinkingField { kind: k.into() }),
            reasoning_effort: output.and_then(|o| o.effort.clone()),
            chat_template_kwargs: None,
            model: self.model,
            max_tokens: if counting { None } else { self.max_tokens },
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: None,
            seed: None,
            stop: self.stop_sequences.map(Stop::Many),
            n: None,
            presence_penalty: None,
            frequency_penalty: None,
            repetition_penalty: None,
            stream: if counting { None } else { self.stream },
            stream_options: None,
            response_format: if counting { None } else { response_format },
            ignore_eos: None,
        })
    }
}
