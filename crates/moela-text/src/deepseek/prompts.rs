//! The fixed texts of DeepSeek's chat encodings: special tokens, the tools section, the response
//! format section and V4's reasoning-effort preambles. They must match the model's training
//! data byte for byte (tests/fixtures/text/golden_chat_encoding.json checks every one).

use crate::dsml::{DsmlDialect, DSML_TOKEN};

pub(super) const BOS: &str = "<｜begin▁of▁sentence｜>";
pub(super) const EOS: &str = "<｜end▁of▁sentence｜>";
pub(super) const USER: &str = "<｜User｜>";
pub(super) const ASSISTANT: &str = "<｜Assistant｜>";
/// V4.1 only.
pub(super) const SYSTEM: &str = "<｜System｜>";
/// V4 only.
pub(super) const LATEST_REMINDER: &str = "<｜latest_reminder｜>";
pub(super) const THINK_OPEN: &str = crate::reasoning::THINK_OPEN;
pub(super) const THINK_CLOSE: &str = crate::reasoning::THINK_CLOSE;

/// V4's task tokens (internal classification tasks), by task name.
pub(super) const TASKS: [(&str, &str); 6] = [
    ("action", "<｜action｜>"),
    ("query", "<｜query｜>"),
    ("authority", "<｜authority｜>"),
    ("domain", "<｜domain｜>"),
    ("title", "<｜title｜>"),
    ("read_url", "<｜read_url｜>"),
];

/// Put before a JSON schema from a message's `response_format`.
pub(super) const RESPONSE_FORMAT: &str =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

/// V4's preamble for `reasoning_effort` `high` (thinking mode, start of the conversation).
pub(super) const EFFORT_HIGH: &str = concat!(
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n",
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to ",
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, ",
    "edge cases, and adversarial scenarios.\n",
    "Explicitly write out your entire deliberation process, documenting every intermediate ",
    "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption ",
    "is left unchecked.\n\n",
);

/// V4's preamble for `reasoning_effort` `max`.
pub(super) const EFFORT_MAX: &str = concat!(
    "Reasoning Effort: Beyond maximum — exhaustive, relentless, and uncompromising.\n",
    "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: ",
    "exhaustively decompose the problem into its most fundamental components, trace every ",
    "causal chain to its root, and resolve the underlying cause rather than any surface ",
    "symptom.\n",
    "Do not stop reasoning until you have independently verified the solution from multiple ",
    "angles and are certain that no assumption remains unchecked and no error remains ",
    "undiscovered.\n\n",
);

/// V4.1's preamble: a budget from 1 to 100.
pub(super) fn effort_budget(budget: u32) -> String {
    format!(
        "Reasoning Effort: {budget} (range 1-100, the higher the value, the more thorough the \
         reasoning)\n\n"
    )
}

/// The tools section of a system (or developer) message; `schemas` is one JSON object a line.
pub(super) fn tools_section(dialect: DsmlDialect, schemas: &str) -> String {
    let d = DSML_TOKEN;
    let block = dialect.block_name();
    let (invoke, parameter) = (dialect.invoke_name(), dialect.parameter_name());
    if dialect == DsmlDialect::V32 {
        return format!(
            "## Tools\n\
             You have access to a set of tools you can use to answer the user's question.\n\
             You can invoke functions by writing a \"<{d}{block}>\" block like the following as \
             part of your reply to the user:\n\
             <{d}{block}>\n\
             <{d}{invoke} name=\"$FUNCTION_NAME\">\n\
             <{d}{parameter} name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</{d}{parameter}>\n\
             ...\n\
             </{d}{invoke}>\n\
             <{d}{invoke} name=\"$FUNCTION_NAME2\">\n\
             ...\n\
             </{d}{invoke}>\n\
             </{d}{block}>\n\
             String and scalar parameters should be specified as is without any escaping or \
             quotes, while lists and objects should use JSON format. The \"string\" attribute \
             should be set to \"true\" for string type parameters and \"false\" for other types \
             (numbers, booleans, arrays, objects).\n\
             If the thinking_mode is enabled, then after function results you should strongly \
             consider outputting a thinking block. Here is an example:\n\
             <{d}{block}>\n\
             ...\n\
             </{d}{block}>\n\
             <function_results>\n\
             ...\n\
             </function_results>\n\
             {THINK_OPEN}...thinking about results{THINK_CLOSE}\n\
             Here are the functions available in JSONSchema format:\n\
             <functions>\n\
             {schemas}\n\
             </functions>\n"
        );
    }
    format!(
        "## Tools\n\n\
         You have access to a set of tools to help answer the user's question. You can invoke \
         tools by writing a \"<{d}{block}>\" block like the following:\n\n\
         <{d}{block}>\n\
         <{d}{invoke} name=\"$TOOL_NAME\">\n\
         <{d}{parameter} name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</{d}{parameter}>\n\
         ...\n\
         </{d}{invoke}>\n\
         <{d}{invoke} name=\"$TOOL_NAME2\">\n\
         ...\n\
         </{d}{invoke}>\n\
         </{d}{block}>\n\n\
         String parameters should be specified as is and set `string=\"true\"`. For all other \
         types (numbers, booleans, arrays, objects), pass the value in JSON format and set \
         `string=\"false\"`.\n\n\
         If thinking_mode is enabled (triggered by {THINK_OPEN}), you MUST output your complete \
         reasoning inside {THINK_OPEN}...{THINK_CLOSE} BEFORE any tool calls or final response.\n\n\
         Otherwise, output directly after {THINK_CLOSE} with tool calls or final response.\n\n\
         ### Available Tool Schemas\n\n\
         {schemas}\n\n\
         You MUST strictly follow the above defined tool name and parameter schemas to invoke \
         tool calls.\n"
    )
}
