//! DSML, the tool-call markup of DeepSeek V3.2 and V4: writing calls into a prompt and reading
//! them back out of a completion.
//!
//! ```text
//! <｜DSML｜function_calls>
//! <｜DSML｜invoke name="get_weather">
//! <｜DSML｜parameter name="city" string="true">杭州</｜DSML｜parameter>
//! <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
//! </｜DSML｜invoke>
//! </｜DSML｜function_calls>
//! ```
//!
//! V3.2 wraps the calls in `function_calls`, V4 in `tool_calls`, V4.1 in ` calls` and puts a
//! space before every tag name (`<｜DSML｜ invoke …>`). A parameter with `string="true"` holds
//! a string as is (no quotes, no escaping); any other value is JSON.
//!
//! Reading ([`parse_dsml_tool_calls`]) follows the writing rules, leniently where a model might
//! slip: a parameter without `string="true"` is JSON when it parses and a string otherwise, the
//! block may lack its closing tag when every call in it is complete (the stop token can come
//! first), and the V4 dialects accept the block-name variants seen from real models. Anything
//! else inside a block is a [`DsmlError`] that names the position and what was expected.

use crate::error::Result;
use crate::json::JsonValue;
use crate::template::ToolCall;
use crate::tool_calls::ParsedToolCall;
use crate::TextError;

/// The marker inside every DSML tag.
pub const DSML_TOKEN: &str = "｜DSML｜";

/// Which spelling of DSML a model writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DsmlDialect {
    /// DeepSeek V3.2: `<｜DSML｜function_calls>`.
    V32,
    /// DeepSeek V4: `<｜DSML｜tool_calls>`.
    V4,
    /// DeepSeek V4.1: `<｜DSML｜ calls>`, `<｜DSML｜ invoke …>`, `<｜DSML｜ parameter …>`.
    V41,
}

impl DsmlDialect {
    /// The name of the block that holds the calls (`function_calls`, `tool_calls`, ` calls`).
    pub fn block_name(self) -> &'static str {
        match self {
            DsmlDialect::V32 => "function_calls",
            DsmlDialect::V4 => "tool_calls",
            DsmlDialect::V41 => " calls",
        }
    }

    /// The tag name of one call (`invoke`; V4.1 ` invoke`).
    pub fn invoke_name(self) -> &'static str {
        match self {
            DsmlDialect::V41 => " invoke",
            _ => "invoke",
        }
    }

    /// The tag name of one argument (`parameter`; V4.1 ` parameter`).
    pub fn parameter_name(self) -> &'static str {
        match self {
            DsmlDialect::V41 => " parameter",
            _ => "parameter",
        }
    }

    /// The tag that opens the block of calls, e.g. `<｜DSML｜function_calls>`.
    pub fn block_open(self) -> String {
        open_tag(self.block_name())
    }

    /// Every opening the parser accepts: [`DsmlDialect::block_open`] first, then variants.
    fn block_opens(self) -> Vec<String> {
        let variants: &[&str] = match self {
            DsmlDialect::V32 => &[],
            DsmlDialect::V4 => &["toolcalls", "tool"],
            DsmlDialect::V41 => &[" tool_calls"],
        };
        std::iter::once(self.block_name())
            .chain(variants.iter().copied())
            .map(open_tag)
            .collect()
    }
}

fn open_tag(name: &str) -> String {
    format!("<{DSML_TOKEN}{name}>")
}

fn close_tag(name: &str) -> String {
    format!("</{DSML_TOKEN}{name}>")
}

// ---------------------------------------------------------------------------------------------
// Writing

/// How strictly a call's `arguments` text must be a JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arguments {
    /// Must parse to an object (V3.2, V4).
    Object,
    /// A JSON object, or a JSON string holding one (decoded up to twice); anything else becomes
    /// `{"arguments": <the text>}` (V4.1).
    Lenient,
}

/// The calls of an assistant turn as the prompt holds them: `"\n\n"` then the block. Empty when
/// there are no calls.
pub(crate) fn render_tool_calls(
    dialect: DsmlDialect,
    calls: &[ToolCall],
    arguments: Arguments,
) -> Result<String> {
    if calls.is_empty() {
        return Ok(String::new());
    }
    let invoke = dialect.invoke_name();
    let mut rendered = Vec::with_capacity(calls.len());
    for call in calls {
        let params = render_arguments(dialect, call, arguments)?;
        rendered.push(format!(
            "<{DSML_TOKEN}{invoke} name=\"{}\">\n{params}\n{}",
            call.function.name,
            close_tag(invoke)
        ));
    }
    let block = dialect.block_name();
    Ok(format!(
        "\n\n{}\n{}\n{}",
        open_tag(block),
        rendered.join("\n"),
        close_tag(block)
    ))
}

fn render_arguments(dialect: DsmlDialect, call: &ToolCall, mode: Arguments) -> Result<String> {
    let text = &call.function.arguments;
    let bad = |what: String| TextError::ChatEncoding {
        message: format!("tool call {:?}: arguments {what}", call.function.name),
    };
    let fields = match (JsonValue::parse(text), mode) {
        (Ok(JsonValue::Object(fields)), _) => fields,
        (Ok(JsonValue::String(inner)), Arguments::Lenient) => match JsonValue::parse(&inner) {
            Ok(JsonValue::Object(fields)) => fields,
            _ => vec![("arguments".to_string(), JsonValue::String(text.clone()))],
        },
        (_, Arguments::Lenient) => vec![("arguments".to_string(), JsonValue::String(text.clone()))],
        (Ok(_), Arguments::Object) => return Err(bad("are not a JSON object".to_string())),
        (Err(e), Arguments::Object) => return Err(bad(format!("are not JSON: {e}"))),
    };
    let parameter = dialect.parameter_name();
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| {
            let (is_str, value) = match value {
                JsonValue::String(s) => ("true", s.clone()),
                other => ("false", other.to_python_json()),
            };
            format!(
                "<{DSML_TOKEN}{parameter} name=\"{key}\" string=\"{is_str}\">{value}{}",
                close_tag(parameter)
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// DSML markup that does not follow the format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed DSML tool calls at byte {offset} of the block: {message}")]
pub struct DsmlError {
    /// What was wrong, e.g. ``expected `</｜DSML｜parameter>`, found the end of the output``.
    pub message: String,
    /// Byte offset in `markup` where it went wrong.
    pub offset: usize,
    /// The markup from the block's opening tag to the end of the output, to show as text.
    pub markup: String,
}

/// Splits a completion into its text and its DSML tool calls.
///
/// The text is what precedes the first block (trailing whitespace removed: the encoder writes
/// `"\n\n"` there) followed by whatever follows the last block (leading whitespace removed).
/// Blocks may follow one another. Arguments come back as JSON text in Python's `json.dumps`
/// form (`{"city": "杭州", "days": 3}`). Output without a block comes back unchanged with no
/// calls; a malformed block is an error and nothing of it is guessed.
pub fn parse_dsml_tool_calls(
    text: &str,
    dialect: DsmlDialect,
) -> Result<(String, Vec<ParsedToolCall>), DsmlError> {
    match find_block(text, dialect) {
        None => Ok((text.to_string(), Vec::new())),
        Some(at) => {
            let (after, calls) = parse_blocks(&text[at..], dialect)?;
            Ok((format!("{}{after}", text[..at].trim_end()), calls))
        }
    }
}

/// Byte offset of the first block opening in `text`.
pub(crate) fn find_block(text: &str, dialect: DsmlDialect) -> Option<usize> {
    dialect
        .block_opens()
        .iter()
        .filter_map(|open| text.find(open.as_str()))
        .min()
}

/// The longest end of `text` that could still grow into a block opening.
pub(crate) fn partial_block_len(text: &str, dialect: DsmlDialect) -> usize {
    dialect
        .block_opens()
        .iter()
        .map(|open| crate::reasoning::partial_suffix_len(text, open))
        .max()
        .unwrap_or(0)
}

/// Parses `markup`, which starts with a block opening: every block, then the trailing text.
pub(crate) fn parse_blocks(
    markup: &str,
    dialect: DsmlDialect,
) -> Result<(String, Vec<ParsedToolCall>), DsmlError> {
    let mut cursor = Cursor {
        text: markup,
        pos: 0,
        dialect,
    };
    let opens = dialect.block_opens();
    let mut calls = Vec::new();
    loop {
        cursor.block(&mut calls)?;
        cursor.skip_whitespace();
        if !opens
            .iter()
            .any(|open| cursor.rest().starts_with(open.as_str()))
        {
            break;
        }
    }
    Ok((cursor.rest().to_string(), calls))
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    dialect: DsmlDialect,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or_default()
    }

    fn at_end(&self) -> bool {
        self.rest().is_empty()
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn eat_any(&mut self, tokens: &[String]) -> bool {
        tokens.iter().any(|t| self.eat(t))
    }

    fn error(&self, expected: &str) -> DsmlError {
        let found = if self.at_end() {
            "the end of the output".to_string()
        } else {
            let snippet: String = self.rest().chars().take(24).collect();
            format!("{snippet:?}")
        };
        DsmlError {
            message: format!("expected {expected}, found {found}"),
            offset: self.pos,
            markup: self.text.to_string(),
        }
    }

    /// One block, from its opening tag to its closing tag (or the end of the output).
    fn block(&mut self, calls: &mut Vec<ParsedToolCall>) -> Result<(), DsmlError> {
        if !self.eat_any(&self.dialect.block_opens()) {
            return Err(self.error(&format!("`{}`", self.dialect.block_open())));
        }
        let closes: Vec<String> = self
            .dialect
            .block_opens()
            .iter()
            .map(|open| open.replacen('<', "</", 1))
            .collect();
        let invoke_open = format!("<{DSML_TOKEN}{} name=\"", self.dialect.invoke_name());
        loop {
            self.skip_whitespace();
            if self.eat_any(&closes) || self.at_end() {
                return Ok(());
            }
            if !self.eat(&invoke_open) {
                let close = close_tag(self.dialect.block_name());
                return Err(self.error(&format!("`{invoke_open}` or `{close}`")));
            }
            calls.push(self.invoke()?);
        }
    }

    /// One call, after `<｜DSML｜invoke name="`.
    fn invoke(&mut self) -> Result<ParsedToolCall, DsmlError> {
        let name = self.quoted_value("the closing `\"` of the tool name")?;
        self.skip_whitespace();
        if !self.eat(">") {
            return Err(self.error("`>` after the tool name"));
        }
        let invoke_close = close_tag(self.dialect.invoke_name());
        let param_open = format!("<{DSML_TOKEN}{}", self.dialect.parameter_name());
        let mut params: Vec<(String, JsonValue)> = Vec::new();
        loop {
            self.skip_whitespace();
            if self.eat(&invoke_close) {
                let arguments = JsonValue::Object(params).to_python_json();
                return Ok(ParsedToolCall { name, arguments });
            }
            if !self.eat(&param_open) {
                return Err(self.error(&format!("`{param_open} name=\"…\">` or `{invoke_close}`")));
            }
            let (key, value) = self.parameter()?;
            match params.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => params.push((key, value)),
            }
        }
    }

    /// One parameter, after `<｜DSML｜parameter`: attributes, `>`, the value, the closing tag.
    fn parameter(&mut self) -> Result<(String, JsonValue), DsmlError> {
        let mut name = None;
        let mut is_string = false;
        loop {
            self.skip_whitespace();
            if self.eat(">") {
                break;
            }
            let rest = self.rest();
            let Some(eq) = rest.find("=\"") else {
                return Err(self.error("a parameter attribute `name=\"…\"` or `>`"));
            };
            let attr = rest[..eq].to_string();
            if attr.is_empty() || attr.contains(|c: char| c.is_whitespace() || c == '>') {
                return Err(self.error("a parameter attribute `name=\"…\"` or `>`"));
            }
            self.pos += eq + 2;
            let value = self.quoted_value("the closing `\"` of a parameter attribute")?;
            match attr.as_str() {
                "name" => name = Some(value),
                "string" => is_string = value == "true",
                _ => {}
            }
        }
        let Some(name) = name else {
            return Err(self.error("a parameter with a `name` attribute before this point"));
        };
        let close = close_tag(self.dialect.parameter_name());
        let Some(end) = self.rest().find(&close) else {
            return Err(self.error(&format!("a value closed by `{close}`")));
        };
        let raw = &self.rest()[..end];
        let value = if is_string {
            JsonValue::String(raw.to_string())
        } else {
            JsonValue::parse(raw).unwrap_or_else(|_| JsonValue::String(raw.to_string()))
        };
        self.pos += end + close.len();
        Ok((name, value))
    }

    /// The text up to the next `"`, which is consumed.
    fn quoted_value(&mut self, expected: &str) -> Result<String, DsmlError> {
        match self.rest().find('"') {
            Some(end) => {
                let value = self.rest()[..end].to_string();
                self.pos += end + 1;
                Ok(value)
            }
            None => Err(self.error(expected)),
        }
    }
}
