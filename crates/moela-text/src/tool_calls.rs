//! Parsing the tool-call markup DeepSeek models emit.
//!
//! V3/R1:
//! ```text
//! <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
//! ```json
//! ARGS
//! ```<｜tool▁call▁end｜>
//! <｜tool▁call▁begin｜>…<｜tool▁call▁end｜><｜tool▁calls▁end｜>
//! ```
//! V3.1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`.

/// Opens the block of tool calls.
pub const TOOL_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
/// Closes the block of tool calls.
pub const TOOL_CALLS_END: &str = "<｜tool▁calls▁end｜>";
/// Opens one call.
pub const TOOL_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
/// Closes one call.
pub const TOOL_CALL_END: &str = "<｜tool▁call▁end｜>";
/// Separates the type (V3) or name (V3.1) from the rest of a call.
pub const TOOL_SEP: &str = "<｜tool▁sep｜>";

/// One tool call found in model output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedToolCall {
    pub name: String,
    /// The arguments as the model wrote them (JSON text, not validated), surrounding
    /// whitespace and the V3 code fence removed.
    pub arguments: String,
}

/// Splits model output into its text and its tool calls.
///
/// The text is what precedes `<｜tool▁calls▁begin｜>` followed by whatever follows
/// `<｜tool▁calls▁end｜>` (usually nothing). Calls missing `<｜tool▁call▁end｜>` (output cut
/// short) or `<｜tool▁sep｜>` are dropped. Output without the markup comes back unchanged with
/// no calls.
pub fn parse_tool_calls(text: &str) -> (String, Vec<ParsedToolCall>) {
    let Some((before, rest)) = text.split_once(TOOL_CALLS_BEGIN) else {
        return (text.to_string(), Vec::new());
    };
    let (mut block, after) = rest.split_once(TOOL_CALLS_END).unwrap_or((rest, ""));
    let mut calls = Vec::new();
    while let Some((_, tail)) = block.split_once(TOOL_CALL_BEGIN) {
        let Some((inner, next)) = tail.split_once(TOOL_CALL_END) else {
            break;
        };
        if let Some(call) = parse_one(inner) {
            calls.push(call);
        }
        block = next;
    }
    (format!("{before}{after}"), calls)
}

fn parse_one(inner: &str) -> Option<ParsedToolCall> {
    let (head, body) = inner.split_once(TOOL_SEP)?;
    // V3: head is the call type ("function"), body is "NAME\n```json\nARGS\n```".
    if let Some((name, args)) = body.split_once('\n') {
        let fenced = args.trim_start().starts_with("```");
        if fenced || head.trim() == "function" {
            return Some(ParsedToolCall {
                name: name.trim().to_string(),
                arguments: strip_fence(args).to_string(),
            });
        }
    }
    // V3.1: head is the name, body the arguments.
    Some(ParsedToolCall {
        name: head.trim().to_string(),
        arguments: body.trim().to_string(),
    })
}

/// Removes a surrounding ```` ```json … ``` ```` fence if there is one.
fn strip_fence(args: &str) -> &str {
    let t = args.trim();
    let Some(opened) = t.strip_prefix("```") else {
        return t;
    };
    // Drop the info string ("json") up to the end of the fence line.
    let opened = match opened.split_once('\n') {
        Some((_info, body)) => body,
        None => opened,
    };
    opened.strip_suffix("```").unwrap_or(opened).trim()
}
