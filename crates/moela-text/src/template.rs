//! Chat templates: the checkpoint's own Jinja template, rendered with `minijinja` set up to
//! behave like the jinja2 environment of transformers' `apply_chat_template`.
//!
//! That environment is: `trim_blocks`, `lstrip_blocks`, no trailing newline kept, loop controls,
//! `raise_exception(msg)`, and a `tojson` filter that is Python's `json.dumps` (no HTML escaping,
//! `ensure_ascii=False`, with `indent`, `separators`, `sort_keys`). On top, for jinja2 parity:
//! Python string/dict methods (`split`, `strip`, `startswith`, `items`, ... from
//! minijinja-contrib's pycompat), and values print as Python prints them (`None`, `True`,
//! `['a', 'b']`, `1e+16`).
//!
//! Messages reach the template as given: `content: null` is `none` (the DeepSeek templates test
//! `message['content'] is none` for tool-call turns), absent optional fields are absent.
//! (transformers 5.23 itself drops None-valued keys first, which makes those templates fail on
//! an OpenAI-style tool-call turn; we follow plain jinja2 / transformers 4.x there.)

use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TextError};
use crate::json::JsonValue;
use crate::python::{py_str, JsonDumps};

const TEMPLATE_NAME: &str = "chat_template";

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
    /// OpenAI's `developer` (instructions). DeepSeek's V3.2/V4 encoders render it as a user turn
    /// with those instructions; Jinja templates see the role as given.
    Developer,
    /// DeepSeek V4's `latest_reminder` (context such as the date, placed before the answer).
    LatestReminder,
}

impl Role {
    /// The role as the template sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Developer => "developer",
            Role::LatestReminder => "latest_reminder",
        }
    }
}

/// The function half of a tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI sends a string).
    pub arguments: String,
}

/// A tool call made by the assistant, OpenAI shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    /// Always `"function"` today.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_string()
}

/// One chat message, OpenAI shape. Unknown fields are kept in `extra` and passed to the
/// template too (e.g. DeepSeek's `prefix`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// `null` for an assistant turn that only calls tools.
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(
        flatten,
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "extra_fields"
    )]
    pub extra: Vec<(String, JsonValue)>,
}

impl ChatMessage {
    /// A message with text content and nothing else.
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: Some(content.into()),
            reasoning_content: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Vec::new(),
        }
    }

    /// The message as the template sees it: a map in field order; `content` always present
    /// (`none` when null), the other optional fields only when set.
    fn to_value(&self) -> Value {
        let mut pairs: Vec<(&str, Value)> = vec![
            ("role", Value::from(self.role.as_str())),
            ("content", Value::from(self.content.clone())),
        ];
        if let Some(r) = &self.reasoning_content {
            pairs.push(("reasoning_content", Value::from(r.as_str())));
        }
        if let Some(calls) = &self.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    Value::from_pairs([
                        ("id", Value::from(c.id.as_str())),
                        ("type", Value::from(c.kind.as_str())),
                        (
                            "function",
                            Value::from_pairs([
                                ("name", c.function.name.as_str()),
                                ("arguments", c.function.arguments.as_str()),
                            ]),
                        ),
                    ])
                })
                .collect();
            pairs.push(("tool_calls", Value::from(calls)));
        }
        if let Some(id) = &self.tool_call_id {
            pairs.push(("tool_call_id", Value::from(id.as_str())));
        }
        let mut map: Vec<(String, Value)> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in &self.extra {
            if !map.iter().any(|(known, _)| known == k) {
                map.push((k.clone(), v.to_template_value()));
            }
        }
        Value::from_pairs(map)
    }
}

/// (De)serializes the flattened unknown fields of a message, keeping their order.
mod extra_fields {
    use super::JsonValue;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        fields: &[(String, JsonValue)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, JsonValue)>, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Vec<(String, JsonValue)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("message fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = access.next_entry::<String, JsonValue>()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The special-token variables a template sees (transformers passes the tokenizer's
/// `special_tokens_map`: those that are set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

/// Per-call inputs besides the messages.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Append the start of an assistant turn. (DeepSeek V3.2 and V4 always open the assistant
    /// turn after a user message, as vLLM does; V4.1 honours this flag.)
    pub add_generation_prompt: bool,
    /// Tool definitions (OpenAI `tools`); `None` is passed as `none`, like transformers.
    pub tools: Option<Vec<JsonValue>>,
    /// Thinking mode on or off; `None` leaves it to the format (DeepSeek V3.2: off, V4: on).
    /// A Jinja template sees it as the variable `thinking` (DeepSeek V3.1's templates read
    /// that) unless `extra` sets one.
    pub thinking: Option<bool>,
    /// Reasoning effort for DeepSeek V4 (`low`, `high`, `max`, ...; `none` turns thinking off).
    /// Jinja templates do not see it.
    pub reasoning_effort: Option<String>,
    /// Further variables, e.g. `("thinking", true)` for V3.1 templates (transformers'
    /// `chat_template_kwargs`). They override the special tokens, not `messages`/`tools`/
    /// `add_generation_prompt`. The DeepSeek encoders read `thinking`, `enable_thinking`,
    /// `reasoning_effort` (V4.1: also an integer 1..100), `drop_thinking` and (V4.1)
    /// `continue_final_message` from here, after the typed fields above.
    pub extra: Vec<(String, JsonValue)>,
}

/// A compiled chat template. Cheap to clone.
#[derive(Clone)]
pub struct ChatTemplate {
    name: Arc<str>,
    source: Arc<str>,
    special: SpecialTokens,
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("source_len", &self.source.len())
            .field("special", &self.special)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a template. Fails if it does not parse.
    pub fn new(source: impl Into<String>, special: SpecialTokens) -> Result<ChatTemplate> {
        Self::with_name(source, special, "(inline)")
    }

    /// Like [`ChatTemplate::new`]; `name` appears in error messages (e.g. the file it came from).
    pub fn with_name(
        source: impl Into<String>,
        special: SpecialTokens,
        name: &str,
    ) -> Result<ChatTemplate> {
        let source: String = source.into();
        let syntax_err = |e: Error| TextError::TemplateSyntax {
            name: name.to_string(),
            message: describe(&e),
        };
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .map_err(syntax_err)?,
        );
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let text = py_str(value)?;
            out.write_str(&text)
                .map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
        });
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(syntax_err)?;
        Ok(ChatTemplate {
            name: Arc::from(name),
            source: Arc::from(source),
            special,
            env: Arc::new(env),
        })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special-token variables the template is rendered with.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Renders the conversation to the prompt text.
    pub fn render(&self, messages: &[ChatMessage], opts: &RenderOptions) -> Result<String> {
        let render_err = |e: Error| TextError::TemplateRender {
            name: self.name.to_string(),
            message: describe(&e),
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;

        let mut ctx: Vec<(String, Value)> = Vec::new();
        let special = [
            ("bos_token", &self.special.bos_token),
            ("eos_token", &self.special.eos_token),
            ("pad_token", &self.special.pad_token),
            ("unk_token", &self.special.unk_token),
        ];
        for (key, value) in special {
            if let Some(v) = value {
                ctx.push((key.to_string(), Value::from(v.as_str())));
            }
        }
        if let Some(thinking) = opts.thinking {
            ctx.push(("thinking".to_string(), Value::from(thinking)));
        }
        for (key, value) in &opts.extra {
            ctx.retain(|(k, _)| k != key);
            ctx.push((key.clone(), value.to_template_value()));
        }
        let reserved = ["messages", "tools", "documents", "add_generation_prompt"];
        ctx.retain(|(k, _)| !reserved.contains(&k.as_str()));
        let messages: Vec<Value> = messages.iter().map(ChatMessage::to_value).collect();
        ctx.push(("messages".to_string(), Value::from(messages)));
        let tools = opts.tools.as_ref().map(|t| {
            Value::from(
                t.iter()
                    .map(JsonValue::to_template_value)
                    .collect::<Vec<_>>(),
            )
        });
        ctx.push(("tools".to_string(), Value::from(tools)));
        ctx.push(("documents".to_string(), Value::from(())));
        ctx.push((
            "add_generation_prompt".to_string(),
            Value::from(opts.add_generation_prompt),
        ));
        template.render(Value::from_pairs(ctx)).map_err(render_err)
    }
}

/// The error with its cause chain (minijinja puts the template's message and line there).
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent_value: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;

    let indent = match indent_value {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => {
                let n = i64::try_from(v)?;
                Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
            }
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer, a string or none",
                ))
            }
        },
    };
    let (item_separator, key_separator) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => match (a.as_str(), b.as_str()) {
                    (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                    _ => return Err(bad_separators()),
                },
                _ => return Err(bad_separators()),
            }
        }
        // Python's defaults depend on indent.
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    JsonDumps {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.unwrap_or(false),
    }
    .dumps(value)
}

fn bad_separators() -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        "tojson: separators must be a pair of strings",
    )
}
