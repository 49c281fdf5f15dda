//! Planning: a validated chat or completions request into a [`Plan`] — prompts rendered and
//! tokenized, sampling and stop settings, grammars compiled, how the output is to be parsed.

use moela_text::{
    prompt_opens_reasoning, ChatMessage, FunctionCall, JsonValue, RenderOptions, Role, ToolCall,
};

use crate::constraint::{lark_json, CompiledGrammar, Lark};
use crate::error::ApiError;
use crate::protocol::*;
use crate::tools::{self, ToolChoice};
use crate::util::random_id;
use crate::AppState;

/// Most choices (prompts × `n`) one request may start.
pub const MAX_CHOICES: usize = 64;
/// `max_tokens` default of `/v1/completions` (OpenAI's).
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    /// Anthropic's `/v1/messages`: planned as a chat request, answered in Anthropic's shape.
    Messages,
}

/// Token ids of a request, each checked to lie in the vocabulary (`0..vocab`).
pub fn check_token_ids(ids: &[i64], vocab: usize, param: &str) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&i| match u32::try_from(i) {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => Err(ApiError::bad(
                param,
                format!("token id {i} is outside the vocabulary (0..{vocab})"),
            )),
        })
        .collect()
}

/// Everything needed to run a request.
pub struct Plan {
    pub(super) endpoint: Endpoint,
    pub(super) prompts: Vec<Vec<u32>>,
    /// Text prepended to each prompt's choices (`echo`).
    pub(super) echo: Vec<String>,
    pub(super) opens_reasoning: bool,
    pub(super) params: GenParams,
    /// Alternatives per token when logprobs were asked for.
    pub(super) logprobs: Option<usize>,
    pub(super) grammar: Option<CompiledGrammar>,
    /// Parse tool-call markup out of the content.
    pub(super) parse_tools: bool,
    /// `parallel_tool_calls: false`: keep only the first call.
    pub(super) single_call: bool,
    /// The DSML dialect of DeepSeek's own encoders (V3.2, V4): tool calls and reasoning are
    /// parsed in that markup.
    pub(super) dsml: Option<moela_text::DsmlDialect>,
}

impl Plan {
    /// The same request, answered in Anthropic's Messages shape.
    pub fn answer_as_messages(mut self) -> Plan {
        self.endpoint = Endpoint::Messages;
        self
    }

    /// Prompt tokens over all prompts.
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }
}

fn content_text(c: &Option<Content>, param: &str) -> Result<Option<String>, ApiError> {
    match c {
        None => Ok(None),
        Some(Content::Text(t)) => Ok(Some(t.clone())),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for (i, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::bad(
                            format!("{param}[{i}].text"),
                            "a text part needs \"text\"",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::bad(
                            format!("{param}[{i}].type"),
                            format!("only text content is supported, got a {other:?} part"),
                        ))
                    }
                }
            }
            Ok(Some(s))
        }
    }
}

/// OpenAI messages into template messages; also returns the prefix to continue, if the last
/// message is an assistant message with `prefix: true` (DeepSeek chat-prefix completion).
fn convert_messages(msgs: &[InMessage]) -> Result<(Vec<ChatMessage>, Option<String>), ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::bad("messages", "messages must not be empty"));
    }
    let mut out = Vec::with_capacity(msgs.len());
    let mut prefix = None;
    for (i, m) in msgs.iter().enumerate() {
        let p = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(ApiError::bad(
                    format!("{p}.role"),
                    format!(
                        "role must be system, developer, user, assistant or tool, got {other:?}"
                    ),
                ))
            }
        };
        let content = content_text(&m.content, &format!("{p}.content"))?;
        let has_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        match role {
            Role::Assistant if content.is_none() && !has_calls => {
                return Err(ApiError::bad(
                    format!("{p}.content"),
                    "an assistant message needs content or tool_calls",
                ))
            }
            Role::Assistant => {}
            _ if content.is_none() => {
                return Err(ApiError::bad(
                    format!("{p}.content"),
                    format!("a {} message needs content", m.role),
                ))
            }
            _ if m.tool_calls.is_some() => {
                return Err(ApiError::bad(
                    format!("{p}.tool_calls"),
                    "only assistant messages carry tool_calls",
                ))
            }
            _ => {}
        }
        if m.prefix == Some(true) {
            if role != Role::Assistant || i + 1 != msgs.len() {
                return Err(ApiError::bad(
                    format!("{p}.prefix"),
                    "prefix is only allowed on the last message, an assistant message",
                ));
            }
            prefix = Some(content.clone().unwrap_or_default());
            break;
        }
        let tool_calls = m.tool_calls.as_ref().map(|calls| {
            calls
                .iter()
                .map(|c| ToolCall {
                    id: c.id.clone().unwrap_or_else(|| random_id("call_", 24)),
                    kind: c.kind.clone().unwrap_or_else(|| "function".into()),
                    function: FunctionCall {
                        name: c.function.name.clone(),
                        arguments: match &c.function.arguments {
                            Arguments::Text(t) => t.clone(),
                            Arguments::Value(v) => serde_json::to_string(v).unwrap_or_default(),
                        },
                    },
                })
                .collect::<Vec<_>>()
        });
        let mut msg = ChatMessage::new(role, String::new());
        msg.content = content;
        msg.reasoning_content = m.reasoning_content.clone();
        msg.tool_calls = tool_calls.filter(|c| !c.is_empty());
        msg.tool_call_id = m.tool_call_id.clone();
        if let Some(n) = &m.name {
            msg.extra
                .push(("name".into(), JsonValue::String(n.clone())));
        }
        out.push(msg);
    }
    Ok((out, prefix))
}

fn logprobs_count(v: Option<i64>, param: &str) -> Result<usize, ApiError> {
    match v {
        None => Ok(0),
        Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Ok(k as usize),
        Some(k) => Err(ApiError::bad(
            param,
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
    }
}

/// The grammar part for `response_format`, if it constrains.
/// Largest JSON schema (serialized) a `response_format` may carry: compiling a grammar is work
/// for the server, and real schemas are a few kilobytes.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

fn response_format_rule(rf: &Option<ResponseFormat>) -> Result<Option<String>, ApiError> {
    match rf {
        None | Some(ResponseFormat::Text) => Ok(None),
        Some(ResponseFormat::JsonObject) => lark_json(&serde_json::json!({"type": "object"}))
            .map(Some)
            .map_err(|e| ApiError::bad("response_format", e)),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.as_ref().ok_or_else(|| {
                ApiError::bad(
                    "response_format.json_schema.schema",
                    "a json_schema response format needs a schema",
                )
            })?;
            let size = serde_json::to_string(schema).map_or(0, |t| t.len());
            if size > MAX_SCHEMA_BYTES {
                return Err(ApiError::bad(
                    "response_format.json_schema.schema",
                    format!("the schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted"),
                ));
            }
            lark_json(schema)
                .map(Some)
                .map_err(|e| ApiError::bad("response_format.json_schema.schema", e))
        }
    }
}

impl AppState {
    fn compile(&self, lark: &str, param: &str) -> Result<CompiledGrammar, ApiError> {
        let g = self.inner.grammars.as_ref().ok_or_else(|| {
            ApiError::bad(
                param,
                "constrained decoding is not available for this model's tokenizer",
            )
        })?;
        g.compile(lark, param)
    }

    /// The tokens of a prompt text, refused without tokenizing when its byte length alone shows
    /// it cannot fit the context (tokenizing megabytes of one word takes seconds).
    fn encode_prompt(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
        let ctx = self.inner.engine.config().ctx;
        let min_tokens = text.len() / self.inner.table.max_token_bytes();
        if min_tokens > ctx {
            return Err(ApiError::ContextLength(format!(
                "the prompt is {} bytes, at least {min_tokens} tokens, but the context holds {ctx}",
                text.len()
            )));
        }
        Ok(self.inner.tokenizer.encode(text, add_special)?)
    }

    /// Plans a chat completion.
    pub fn plan_chat(&self, req: ChatRequest) -> Result<Plan, ApiError> {
        let common = req.common();
        let (max_tokens, name) = match (req.max_completion_tokens, common.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let params = common.validate(max_tokens, name, &self.inner.settings.sampling)?;
        let logprobs = match req.logprobs {
            Some(true) => Some(logprobs_count(req.top_logprobs, "top_logprobs")?),
            _ if req.top_logprobs.is_some_and(|k| k > 0) => {
                return Err(ApiError::bad(
                    "top_logprobs",
                    "top_logprobs requires logprobs to be true",
                ))
            }
            _ => None,
        };
        let (mut messages, prefix) = convert_messages(&req.messages)?;
        let tool_specs = tools::parse_tools(req.tools.as_deref().unwrap_or(&[]))?;
        let choice = tools::parse_tool_choice(req.tool_choice.as_ref(), &tool_specs)?;
        let format = self
            .inner
            .tokenizer
            .chat_format()
            .ok_or_else(|| ApiError::from(moela_text::TextError::NoChatTemplate))?;
        let mut opts = RenderOptions {
            add_generation_prompt: true,
            thinking: match &req.thinking {
                None => None,
                Some(t) if t.kind == "enabled" => Some(true),
                Some(t) if t.kind == "disabled" => Some(false),
                Some(t) => {
                    return Err(ApiError::bad(
                        "thinking.type",
                        format!(
                            "thinking.type must be \"enabled\" or \"disabled\", got {:?}",
                            t.kind
                        ),
                    ))
                }
            },
            reasoning_effort: req.reasoning_effort.clone(),
            extra: match &req.chat_template_kwargs {
                None | Some(JsonValue::Null) => Vec::new(),
                Some(JsonValue::Object(kv)) => kv.clone(),
                Some(_) => {
                    return Err(ApiError::bad(
                        "chat_template_kwargs",
                        "chat_template_kwargs must be an object",
                    ))
                }
            },
            ..Default::default()
        };
        let use_tools = choice != ToolChoice::None && !tool_specs.is_empty();
        if use_tools {
            // DeepSeek's own encoders (V3.2, V4) write the tools section themselves.
            let encoder_reads_tools = !matches!(format, moela_text::ChatFormat::Jinja(_));
            if self.inner.template_reads_tools || encoder_reads_tools {
                opts.tools = req.tools.clone();
            } else {
                let text = tools::tools_system_text(&tool_specs, self.inner.call_format);
                tools::add_tools_to_messages(&mut messages, text);
            }
        }
        let mut text = format.render(&messages, &opts)?;
        if let Some(p) = &prefix {
            text.push_str(p);
        }
        let ids = self.encode_prompt(&text, false)?;
        let opens_reasoning = prompt_opens_reasoning(&text);

        let json_rule = response_format_rule(&common.response_format)?;
        let parallel = req.parallel_tool_calls.unwrap_or(true);
        let table = self.inner.table.as_ref();
        let fmt = self.inner.call_format;
        let dsml = format.dsml_dialect();
        let calls = |only| match dsml {
            Some(dialect) => tools::dsml_call_grammar(&tool_specs, only, parallel, dialect),
            None => tools::tool_call_grammar(&tool_specs, only, parallel, fmt, table),
        };
        let lark = match (&choice, json_rule) {
            (ToolChoice::Required, _) => Some(Lark::start("calls").rules(calls(None)?)),
            (ToolChoice::Named(n), _) => Some(Lark::start("calls").rules(calls(Some(n))?)),
            // Either the JSON answer or tool calls.
            (ToolChoice::Auto, Some(json)) if use_tools => Some(
                Lark::start("answer")
                    .or("calls")
                    .rule("answer", json)
                    .rules(calls(None)?),
            ),
            (_, Some(json)) => Some(Lark::start(json)),
            _ => None,
        }
        .map(|g| g.render());
        let grammar = match lark {
            Some(l) => {
                let param = if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
                    "tools"
                } else {
                    "response_format"
                };
                Some(self.compile(&l, param)?)
            }
            None => None,
        };
        Ok(Plan {
            endpoint: Endpoint::Chat,
            prompts: vec![ids],
            echo: vec![String::new()],
            opens_reasoning,
            params,
            logprobs,
            grammar,
            parse_tools: use_tools,
            single_call: !parallel,
            dsml,
        })
    }

    /// Plans a (legacy) completion.
    pub fn plan_completion(&self, req: CompletionRequest) -> Result<Plan, ApiError> {
        let common = req.common();
        let mut params = common.validate(
            common.max_tokens,
            "max_tokens",
            &self.inner.settings.sampling,
        )?;
        if params.max_tokens.is_none() {
            params.max_tokens = Some(COMPLETIONS_DEFAULT_MAX_TOKENS);
        }
        let logprobs = match req.logprobs {
            None => None,
            Some(k) => Some(logprobs_count(Some(k), "logprobs")?),
        };
        match req.best_of {
            None | Some(1) => {}
            Some(b) if b == params.n as i64 => {}
            Some(_) => {
                return Err(ApiError::bad(
                    "best_of",
                    "best_of other than 1 or n is not supported",
                ))
            }
        }
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad(
                "suffix",
                "suffix (fill-in-the-middle) is not supported",
            ));
        }
        let tok = &self.inner.tokenizer;
        let vocab = self.inner.table.len();
        let check_ids = |ids: &[i64], param: String| check_token_ids(ids, vocab, &param);
        let (prompts, texts): (Vec<Vec<u32>>, Vec<String>) = match &req.prompt {
            PromptField::Text(t) => (vec![self.encode_prompt(t, true)?], vec![t.clone()]),
            PromptField::Texts(ts) => {
                let mut p = Vec::new();
                for t in ts {
                    p.push(self.encode_prompt(t, true)?);
                }
                (p, ts.clone())
            }
            PromptField::Ids(ids) => {
                let ids = check_ids(ids, "prompt".into())?;
                let text = tok.decode(&ids, false)?;
                (vec![ids], vec![text])
            }
            PromptField::IdLists(lists) => {
                let mut p = Vec::new();
                let mut t = Vec::new();
                for (i, l) in lists.iter().enumerate() {
                    let ids = check_ids(l, format!("prompt[{i}]"))?;
                    t.push(tok.decode(&ids, false)?);
                    p.push(ids);
                }
                (p, t)
            }
        };
        if prompts.is_empty() {
            return Err(ApiError::bad("prompt", "prompt must not be empty"));
        }
        if prompts.len() * params.n > MAX_CHOICES {
            return Err(ApiError::bad(
                "prompt",
                format!("at most {MAX_CHOICES} completions (prompts × n) per request"),
            ));
        }
        let echo = if req.echo.unwrap_or(false) {
            texts.clone()
        } else {
            vec![String::new(); prompts.len()]
        };
        let opens_reasoning = texts.first().is_some_and(|t| prompt_opens_reasoning(t));
        let grammar = match response_format_rule(&common.response_format)? {
            Some(json) => Some(self.compile(&format!("start: {json}\n"), "response_format")?),
            None => None,
        };
        Ok(Plan {
            endpoint: Endpoint::Completions,
            prompts,
            echo,
            opens_reasoning,
            params,
            logprobs,
            grammar,
            parse_tools: false,
            single_call: false,
            dsml: None,
        })
    }
}
