//! Tools: the `tools` of a request in the prompt, a grammar that forces a call when
//! `tool_choice` asks for one, and the model's DeepSeek tool-call markup back into OpenAI
//! `tool_calls`.
//!
//! DeepSeek's V3 and R1 chat templates do not read the `tools` variable; for templates that do
//! not mention it, the tool list is added to the system prompt in the form DeepSeek's V3.1
//! template uses (`## Tools` … the exact call format), with the call markup of the template's
//! own generation (V3: `function<｜tool▁sep｜>NAME\n```json\nARGS\n```` ; V3.1: `NAME<｜tool▁sep｜>ARGS`).

use moela_text::{
    ChatMessage, ChatTemplate, DsmlDialect, JsonValue, ParsedToolCall, Role, DSML_TOKEN,
    TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_SEP,
};

use crate::constraint::{lark_json, lark_markup, lark_str, TokenTable};
use crate::error::ApiError;
use crate::protocol::{FunctionOut, ToolCallOut, ToolChoiceField};

/// One function the model may call.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (`{"type": "object"}` when absent).
    pub parameters: serde_json::Value,
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// How the template writes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFormat {
    /// `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>`
    V3,
    /// `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`
    V31,
}

impl CallFormat {
    /// V3 when the template writes calls with a ```json fence, else V3.1.
    pub fn of(template: Option<&ChatTemplate>) -> CallFormat {
        match template {
            Some(t) if !t.source().contains("```json") => CallFormat::V31,
            _ => CallFormat::V3,
        }
    }
}

/// Whether the template reads the `tools` variable.
pub fn template_reads_tools(template: &ChatTemplate) -> bool {
    let src = template.source();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    src.match_indices("tools").any(|(i, _)| {
        let before = src[..i].chars().next_back();
        let after = src[i + "tools".len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// Parses and checks `tools`.
/// Most tools a request may declare (OpenAI's documented limit). Tool lists become prompt text
/// and, when a call is forced, a grammar; thousands of tools only cost the server.
pub const MAX_TOOLS: usize = 128;

pub fn parse_tools(tools: &[JsonValue]) -> Result<Vec<ToolSpec>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad(
            "tools",
            format!("{} tools; at most {MAX_TOOLS} are accepted", tools.len()),
        ));
    }
    let mut out: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let v = serde_json::to_value(t).map_err(|e| ApiError::bad(&param, e.to_string()))?;
        let kind = v.get("type").and_then(|k| k.as_str()).unwrap_or("function");
        if kind != "function" {
            return Err(ApiError::bad(
                format!("{param}.type"),
                format!("only tools of type \"function\" are supported, got {kind:?}"),
            ));
        }
        let f = v.get("function").filter(|f| f.is_object()).ok_or_else(|| {
            ApiError::bad(
                format!("{param}.function"),
                "a tool needs a \"function\" object",
            )
        })?;
        let name = f
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad(
                    format!("{param}.function.name"),
                    "a function needs a non-empty \"name\"",
                )
            })?;
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) || name.len() > 64 {
            return Err(ApiError::bad(
                format!("{param}.function.name"),
                format!(
                    "function names must be at most 64 characters without whitespace, got {name:?}"
                ),
            ));
        }
        if out.iter().any(|s| s.name == name) {
            return Err(ApiError::bad(
                format!("{param}.function.name"),
                format!("function {name:?} is defined twice"),
            ));
        }
        let description = match f.get("description") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::bad(
                    format!("{param}.function.description"),
                    "description must be a string",
                ))
            }
        };
        let parameters = match f.get("parameters") {
            None | Some(serde_json::Value::Null) => serde_json::json!({"type": "object"}),
            Some(p @ serde_json::Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(ApiError::bad(
                    format!("{param}.function.parameters"),
                    "parameters must be a JSON schema object",
                ))
            }
        };
        out.push(ToolSpec {
            name: name.to_string(),
            description,
            parameters,
        });
    }
    Ok(out)
}

/// Resolves `tool_choice` (default: `auto` with tools, `none` without).
pub fn parse_tool_choice(
    field: Option<&ToolChoiceField>,
    tools: &[ToolSpec],
) -> Result<ToolChoice, ApiError> {
    let choice = match field {
        None if tools.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(ToolChoiceField::Mode(m)) => match m.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!("tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {other:?}"),
                ))
            }
        },
        Some(ToolChoiceField::Named { function }) => ToolChoice::Named(function.name.clone()),
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Named(_) if tools.is_empty() => Err(ApiError::bad(
            "tool_choice",
            "tool_choice requires a call, but no tools were given",
        )),
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => Err(ApiError::bad(
            "tool_choice",
            format!("tool_choice names {n:?}, which is not among the tools"),
        )),
        _ => Ok(choice),
    }
}

/// The system-prompt text that describes `tools` and the call format (DeepSeek V3.1's wording).
pub fn tools_system_text(tools: &[ToolSpec], format: CallFormat) -> String {
    let mut s = String::from("## Tools\nYou have access to the following tools:\n");
    for t in tools {
        s.push_str(&format!(
            "\n### {}\nDescription: {}\n\nParameters: {}\n",
            t.name,
            t.description.as_deref().unwrap_or(""),
            t.parameters
        ));
    }
    let call = match format {
        CallFormat::V3 => format!(
            "{TOOL_CALL_BEGIN}function{TOOL_SEP}tool_call_name\n```json\ntool_call_arguments\n```{TOOL_CALL_END}"
        ),
        CallFormat::V31 => {
            format!("{TOOL_CALL_BEGIN}tool_call_name{TOOL_SEP}tool_call_arguments{TOOL_CALL_END}")
        }
    };
    s.push_str(&format!(
        "\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n{TOOL_CALLS_BEGIN}{call}{{{{additional_tool_calls}}}}{TOOL_CALLS_END}\n\n\
         Where:\n\n\
         - `tool_call_name` must be an exact match to one of the available tools\n\
         - `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n\
         - For multiple tool calls, chain them directly without separators or spaces\n"
    ));
    s
}

/// Adds the tool description as a system message after the leading system messages (the
/// DeepSeek templates join all system messages with a blank line).
pub fn add_tools_to_messages(messages: &mut Vec<ChatMessage>, text: String) {
    let at = messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count();
    messages.insert(at, ChatMessage::new(Role::System, text));
}

/// The Lark rules of forced tool calls, entered by the rule `calls`: one call of `only` when
/// given, else one or more (one when `parallel` is false) of any tool. A grammar starts from
/// `calls` (or offers it beside other alternatives: [`crate::constraint::Lark`]).
pub fn tool_call_grammar(
    tools: &[ToolSpec],
    only: Option<&str>,
    parallel: bool,
    format: CallFormat,
    table: &TokenTable,
) -> Result<Vec<(String, String)>, ApiError> {
    let m = |t: &str| lark_markup(table, t);
    let mut rules = Vec::new();
    let mut alternatives = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if only.is_some_and(|n| n != t.name) {
            continue;
        }
        let args = lark_json(&t.parameters)
            .map_err(|e| ApiError::bad(format!("tools[{i}].function.parameters"), e))?;
        let body = match format {
            CallFormat::V3 => format!(
                "{} {} {} {} args_{i} {} {}",
                m(TOOL_CALL_BEGIN),
                lark_str("function"),
                m(TOOL_SEP),
                lark_str(&format!("{}\n```json\n", t.name)),
                lark_str("\n```"),
                m(TOOL_CALL_END)
            ),
            CallFormat::V31 => format!(
                "{} {} {} args_{i} {}",
                m(TOOL_CALL_BEGIN),
                lark_str(&t.name),
                m(TOOL_SEP),
                m(TOOL_CALL_END)
            ),
        };
        rules.push((format!("call_{i}"), body));
        rules.push((format!("args_{i}"), args));
        alternatives.push(format!("call_{i}"));
    }
    let repeat = if parallel && only.is_none() { "+" } else { "" };
    let mut g = vec![
        (
            "calls".to_string(),
            format!("{} call{repeat} {}", m(TOOL_CALLS_BEGIN), m(TOOL_CALLS_END)),
        ),
        ("call".to_string(), alternatives.join(" | ")),
    ];
    g.extend(rules);
    Ok(g)
}

/// [`tool_call_grammar`] for models that call tools in DSML (DeepSeek V3.2/V4): the block of
/// `dialect` exactly as DeepSeek's encoder writes calls into a prompt, each call's arguments one
/// `parameter` line per property of its schema, in the schema's order (required ones always,
/// the others optionally). A string property (`"type": "string"`, or an `enum` of strings) is
/// written raw with `string="true"` (its text may not contain `<`, which would start the closing
/// tag); any other property is JSON following its schema, with `string="false"`.
pub fn dsml_call_grammar(
    tools: &[ToolSpec],
    only: Option<&str>,
    parallel: bool,
    dialect: DsmlDialect,
) -> Result<Vec<(String, String)>, ApiError> {
    let tag = |close: bool, name: &str, attrs: &str| {
        let slash = if close { "/" } else { "" };
        format!("<{slash}{DSML_TOKEN}{name}{attrs}>")
    };
    let (invoke, parameter) = (dialect.invoke_name(), dialect.parameter_name());
    let mut rules = Vec::new();
    let mut alternatives = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if only.is_some_and(|n| n != t.name) {
            continue;
        }
        let field = |k: &str| format!("tools[{i}].function.parameters{k}");
        let props = match t.parameters.get("properties") {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(p)) => p.clone(),
            Some(_) => return Err(ApiError::bad(field(".properties"), "must be an object")),
        };
        let required: Vec<&str> = match t.parameters.get("required") {
            Some(serde_json::Value::Array(r)) => r.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        let open = tag(false, invoke, &format!(" name=\"{}\"", t.name));
        let mut body = vec![lark_str(&format!("{open}\n"))];
        if props.is_empty() {
            // The encoder writes an empty argument list as an empty line.
            body.push(lark_str("\n"));
        }
        for (k, (name, schema)) in props.iter().enumerate() {
            let strings = schema.get("enum").and_then(|e| e.as_array()).and_then(|e| {
                e.iter()
                    .map(|v| v.as_str().map(lark_str))
                    .collect::<Option<Vec<_>>>()
            });
            let (raw, value) = match strings {
                Some(choices) if !choices.is_empty() => (true, choices.join(" | ")),
                _ if schema.get("type").and_then(|v| v.as_str()) == Some("string")
                    && schema.get("enum").is_none() =>
                {
                    (true, "/[^<]*/".to_string())
                }
                _ => (
                    false,
                    lark_json(schema)
                        .map_err(|e| ApiError::bad(field(&format!(".properties.{name}")), e))?,
                ),
            };
            let attrs = format!(" name=\"{name}\" string=\"{raw}\"");
            rules.push((
                format!("param_{i}_{k}"),
                format!(
                    "{} value_{i}_{k} {}",
                    lark_str(&tag(false, parameter, &attrs)),
                    lark_str(&format!("{}\n", tag(true, parameter, "")))
                ),
            ));
            rules.push((format!("value_{i}_{k}"), value));
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            body.push(format!("param_{i}_{k}{optional}"));
        }
        body.push(lark_str(&tag(true, invoke, "")));
        rules.push((format!("call_{i}"), body.join(" ")));
        alternatives.push(format!("call_{i}"));
    }
    let block = dialect.block_name();
    let more = if parallel && only.is_none() {
        format!("({} call)*", lark_str("\n"))
    } else {
        String::new()
    };
    let mut g = vec![
        (
            "calls".to_string(),
            format!(
                "{} call {more} {}",
                lark_str(&format!("{}\n", tag(false, block, ""))),
                lark_str(&format!("\n{}", tag(true, block, "")))
            ),
        ),
        ("call".to_string(), alternatives.join(" | ")),
    ];
    g.extend(rules);
    Ok(g)
}

/// Parsed calls in OpenAI shape, with fresh ids.
pub fn tool_calls_out(calls: Vec<ParsedToolCall>) -> Vec<ToolCallOut> {
    calls
        .into_iter()
        .map(|c| ToolCallOut {
            id: crate::util::random_id("call_", 24),
            kind: "function",
            function: FunctionOut {
                name: c.name,
                arguments: c.arguments,
            },
        })
        .collect()
}

/// Streams content through, holding back everything from the start of the tool-call markup
/// (or a partial prefix of it) on, so the markup never reaches `content`.
#[derive(Debug, Default)]
pub struct ToolSplitter {
    pending: String,
    /// Text from `<｜tool▁calls▁begin｜>` on.
    markup: Option<String>,
}

impl ToolSplitter {
    /// Feeds content; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        if let Some(m) = &mut self.markup {
            m.push_str(text);
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(at) = self.pending.find(TOOL_CALLS_BEGIN) {
            let out = self.pending[..at].to_string();
            self.markup = Some(self.pending[at..].to_string());
            self.pending.clear();
            return out;
        }
        let keep = (1..TOOL_CALLS_BEGIN.len())
            .rev()
            .filter(|&n| TOOL_CALLS_BEGIN.is_char_boundary(n))
            .find(|&n| self.pending.ends_with(&TOOL_CALLS_BEGIN[..n]))
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        out
    }

    /// End of output: the remaining shown text and the calls.
    pub fn finish(&mut self) -> (String, Vec<ParsedToolCall>) {
        let pending = std::mem::take(&mut self.pending);
        match self.markup.take() {
            None => (pending, Vec::new()),
            Some(m) => {
                let (text, calls) = moela_text::parse_tool_calls(&m);
                (format!("{pending}{text}"), calls)
            }
        }
    }
}
