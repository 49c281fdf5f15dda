//! DeepSeek's own chat encodings. V3.2 and V4 ship no Jinja template; DeepSeek publishes Python
//! encoders instead (`encoding_dsv32.py` and its V4/V4.1 siblings). This is a Rust rendering of
//! the same strings, byte for byte, including the way vLLM's serving wrapper turns a request into
//! the encoder's inputs (where request tools go, the thinking default, the effort names).
//!
//! Shared by all three:
//! * the prompt opens with `<｜begin▁of▁sentence｜>`; a system message is its text, then
//!   `"\n\n"` + the tools section if it carries tools, then `"\n\n"` + the response-format
//!   section if it carries a `response_format` (any JSON, written with Python's `json.dumps`);
//! * a user turn is `<｜User｜>…`; the assistant turn opens with `<｜Assistant｜>` then
//!   `<think>` (thinking mode, the turn being generated) or `</think>` (chat mode, or an
//!   earlier turn);
//! * an assistant turn is `reasoning</think>` (thinking mode, only after the last user
//!   message), the content, `"\n\n"` + a DSML block when it calls tools, and
//!   `<｜end▁of▁sentence｜>`; reasoning of turns before the last user message is dropped;
//! * a `developer` message carries instructions (and may carry tools / a schema) as a user turn.
//!
//! The version-specific rules are in [`v32`] and [`v4`]. Message fields beyond `ChatMessage`'s
//! own come from its `extra`: `tools` and `response_format` (system, developer), `prefix`
//! (V3.2 assistant), `wo_eos` (V4 assistant: no end-of-sentence) and `task` (V4).

mod prompts;
mod v32;
mod v4;

use std::borrow::Cow;

use crate::dsml::DsmlDialect;
use crate::error::{Result, TextError};
use crate::json::JsonValue;
use crate::template::{ChatMessage, RenderOptions, Role, ToolCall};

/// Which of DeepSeek's encoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V32,
    V4,
    V41,
}

impl Version {
    pub(crate) fn dialect(self) -> DsmlDialect {
        match self {
            Version::V32 => DsmlDialect::V32,
            Version::V4 => DsmlDialect::V4,
            Version::V41 => DsmlDialect::V41,
        }
    }
}

/// Renders `messages` as DeepSeek's encoder `version` does.
pub(crate) fn render(
    version: Version,
    messages: &[ChatMessage],
    opts: &RenderOptions,
) -> Result<String> {
    let controls = Controls::resolve(version, opts)?;
    let mut msgs = messages
        .iter()
        .map(Msg::from_message)
        .collect::<Result<Vec<_>>>()?;
    if version == Version::V41 {
        if let Some(m) = msgs.iter().find(|m| m.role == Role::LatestReminder) {
            return Err(fail(format!("Invalid role: {}", m.role.as_str())));
        }
    }
    let request_tools = opts.tools.as_deref().unwrap_or_default();
    if !request_tools.is_empty() {
        attach_tools(version, &mut msgs, request_tools);
    }
    match version {
        Version::V32 => v32::render(msgs, &controls),
        Version::V4 | Version::V41 => v4::render(version, msgs, &controls),
    }
}

/// vLLM's placement of request tools: V3.2 puts them in a new first system message; V4 and
/// V4.1 attach them to the first system message, inserting one (V4.1: with empty content)
/// when there is none.
fn attach_tools<'a>(version: Version, msgs: &mut Vec<Msg<'a>>, tools: &'a [JsonValue]) {
    let existing = msgs.iter().position(|m| m.role == Role::System);
    let at = match (version, existing) {
        (Version::V32, _) | (_, None) => {
            let content = (version == Version::V41).then_some("");
            msgs.insert(0, Msg::bare(Role::System, content));
            0
        }
        (_, Some(at)) => at,
    };
    msgs[at].tools = tools;
}

fn fail(message: impl Into<String>) -> TextError {
    TextError::ChatEncoding {
        message: message.into(),
    }
}

/// The V4 reasoning-effort setting after vLLM's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effort {
    /// V4: no preamble.
    Low,
    High,
    Max,
    /// V4.1: the budget 1..=100 its preamble states.
    Budget(u32),
}

/// The request's switches after vLLM's serving rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Controls {
    pub(crate) thinking: bool,
    /// V4/V4.1 `drop_thinking` (default true); V3.2 decides by itself.
    pub(crate) drop_thinking: bool,
    pub(crate) effort: Effort,
    /// V4.1 only.
    pub(crate) add_generation_prompt: bool,
    /// V4.1 only: leave the final assistant message open.
    pub(crate) continue_final: bool,
}

impl Controls {
    fn resolve(version: Version, opts: &RenderOptions) -> Result<Controls> {
        let extra = |key: &str| {
            opts.extra
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
        };
        let typed_thinking = opts.thinking.map(JsonValue::Bool);
        let thinking_key = typed_thinking.as_ref().or_else(|| extra("thinking"));
        let enable_key = extra("enable_thinking");
        let truthy = |v: Option<&JsonValue>| v.is_some_and(JsonValue::truthy);
        let asked = truthy(thinking_key) || truthy(enable_key);
        let mut thinking = match version {
            Version::V32 => asked,
            _ if thinking_key.is_none() && enable_key.is_none() => true,
            _ => asked,
        };
        let typed_effort = opts.reasoning_effort.clone().map(JsonValue::String);
        let effort_value = typed_effort.as_ref().or_else(|| extra("reasoning_effort"));
        let effort = match version {
            Version::V32 => Effort::Low,
            Version::V4 => match effort_value {
                Some(JsonValue::String(s)) => match s.as_str() {
                    "none" => {
                        thinking = false;
                        Effort::Low
                    }
                    "max" => Effort::Max,
                    "low" | "minimal" | "medium" => Effort::Low,
                    _ => Effort::High,
                },
                _ if thinking => Effort::High,
                _ => Effort::Low,
            },
            Version::V41 => match effort_value {
                Some(JsonValue::String(s)) if s == "none" => {
                    thinking = false;
                    Effort::Budget(75)
                }
                None | Some(JsonValue::Null) => Effort::Budget(75),
                Some(v) => v41_budget(v)?,
            },
        };
        Ok(Controls {
            thinking,
            drop_thinking: extra("drop_thinking").is_none_or(JsonValue::truthy),
            effort,
            add_generation_prompt: opts.add_generation_prompt,
            continue_final: truthy(extra("continue_final_message")),
        })
    }
}

/// V4.1's effort: `low` 50, `high`/`xhigh` 75, `max` 100, or an integer 1..=100.
fn v41_budget(v: &JsonValue) -> Result<Effort> {
    let budget = match v {
        JsonValue::String(s) => match s.as_str() {
            "low" => Some(50),
            "high" | "xhigh" => Some(75),
            "max" => Some(100),
            _ => None,
        },
        JsonValue::Number(n) => n.as_u64().filter(|b| (1..=100).contains(b)),
        _ => None,
    };
    budget
        .and_then(|b| u32::try_from(b).ok())
        .map(Effort::Budget)
        .ok_or_else(|| {
            fail(format!(
                "DeepSeek V4.1 reasoning_effort must be low, high, xhigh, max, or an integer \
                 within [1, 100], not {}",
                v.to_python_json()
            ))
        })
}

/// One part of a V4 user message after tool results are merged into it.
#[derive(Clone, Debug)]
pub(crate) enum Block<'a> {
    /// A user message's text (`None`: its content was null).
    Text(Option<&'a str>),
    /// A tool message's result, with the id of the call it answers.
    ToolResult {
        id: &'a str,
        content: Option<&'a str>,
    },
}

/// A message as the encoders read it.
#[derive(Clone, Debug)]
pub(crate) struct Msg<'a> {
    pub(crate) role: Role,
    pub(crate) content: Option<&'a str>,
    pub(crate) reasoning: Option<&'a str>,
    pub(crate) tool_calls: &'a [ToolCall],
    pub(crate) tool_call_id: &'a str,
    pub(crate) tools: &'a [JsonValue],
    pub(crate) response_format: Option<&'a JsonValue>,
    pub(crate) prefix: bool,
    pub(crate) wo_eos: bool,
    /// V4 `task`; a value that is not a string is kept as its JSON text (and is invalid).
    pub(crate) task: Option<Cow<'a, str>>,
    /// V4: the parts of a user message (set for every user message when merging).
    pub(crate) blocks: Vec<Block<'a>>,
}

impl<'a> Msg<'a> {
    /// A message with only a role and content.
    pub(crate) fn bare(role: Role, content: Option<&'a str>) -> Msg<'a> {
        Msg {
            role,
            content,
            reasoning: None,
            tool_calls: &[],
            tool_call_id: "",
            tools: &[],
            response_format: None,
            prefix: false,
            wo_eos: false,
            task: None,
            blocks: Vec::new(),
        }
    }

    fn from_message(m: &'a ChatMessage) -> Result<Msg<'a>> {
        let extra = |key: &str| m.extra.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        let tools = match extra("tools") {
            Some(JsonValue::Array(items)) => items.as_slice(),
            Some(v) if v.truthy() => return Err(fail("a message's tools must be a list")),
            _ => &[],
        };
        let task = match extra("task") {
            None | Some(JsonValue::Null) => None,
            Some(JsonValue::String(s)) => Some(Cow::Borrowed(s.as_str())),
            Some(other) => Some(Cow::Owned(other.to_python_json())),
        };
        Ok(Msg {
            role: m.role,
            content: m.content.as_deref(),
            reasoning: m.reasoning_content.as_deref(),
            tool_calls: m.tool_calls.as_deref().unwrap_or_default(),
            tool_call_id: m.tool_call_id.as_deref().unwrap_or_default(),
            tools,
            response_format: extra("response_format").filter(|v| v.truthy()),
            prefix: extra("prefix").is_some_and(JsonValue::truthy),
            wo_eos: extra("wo_eos").is_some_and(JsonValue::truthy),
            task,
            blocks: Vec::new(),
        })
    }

    /// `content or ""`.
    fn text(&self) -> &'a str {
        self.content.unwrap_or_default()
    }
}

/// How Python formats a value that may be `None` into a string.
fn py_text(content: Option<&str>) -> &str {
    content.unwrap_or("None")
}

/// The tools and response-format sections a system or developer message adds.
fn sections(version: Version, msg: &Msg) -> Result<String> {
    let mut out = String::new();
    if !msg.tools.is_empty() {
        let mut schemas = Vec::with_capacity(msg.tools.len());
        for tool in msg.tools {
            let function = tool
                .get("function")
                .ok_or_else(|| fail("a tool definition has no \"function\""))?;
            schemas.push(function.to_python_json());
        }
        out.push_str("\n\n");
        out.push_str(&prompts::tools_section(
            version.dialect(),
            &schemas.join("\n"),
        ));
    }
    if let Some(schema) = msg.response_format {
        out.push_str("\n\n");
        out.push_str(prompts::RESPONSE_FORMAT);
        out.push_str(&schema.to_python_json());
    }
    Ok(out)
}

/// Index of the last message that starts a user turn, or -1.
fn last_index(msgs: &[Msg], starts_turn: impl Fn(usize, &Msg) -> bool) -> isize {
    (0..msgs.len())
        .rev()
        .find(|&i| starts_turn(i, &msgs[i]))
        .map_or(-1, |i| i as isize)
}
