//! moela-text: text in, text out. It never touches tensors.
//!
//! * [`Tokenizer`]: `tokenizer.json` (via the `tokenizers` crate) plus what
//!   `tokenizer_config.json` adds: BOS/EOS, `add_bos_token`, chat templates.
//! * [`ChatTemplate`]: the checkpoint's Jinja chat template rendered with `minijinja`, set up to
//!   match transformers' jinja2 environment byte for byte.
//! * [`StreamDecoder`]: ids to text one at a time, never half a UTF-8 character.
//! * [`split_reasoning`] / [`ReasoningParser`]: R1 `<think>…</think>` into reasoning and answer.
//! * [`parse_tool_calls`]: DeepSeek tool-call markup into calls.

mod error;
mod json;
mod python;
mod reasoning;
mod stream;
mod template;
mod tokenizer;
mod tool_calls;

pub use error::{Result, TextError};
pub use json::JsonValue;
pub use reasoning::{
    prompt_opens_reasoning, split_reasoning, ReasoningParser, THINK_CLOSE, THINK_OPEN,
};
pub use stream::StreamDecoder;
pub use template::{
    ChatMessage, ChatTemplate, FunctionCall, RenderOptions, Role, SpecialTokens, ToolCall,
};
pub use tokenizer::{ChatPrompt, Tokenizer, DEFAULT_TEMPLATE_NAME};
pub use tool_calls::{
    parse_tool_calls, ParsedToolCall, TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN,
    TOOL_CALL_END, TOOL_SEP,
};
