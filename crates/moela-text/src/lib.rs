//! moela-text: text in, text out. It never touches tensors.
//!
//! * [`Tokenizer`]: `tokenizer.json` (via the `tokenizers` crate) plus what
//!   `tokenizer_config.json` adds: BOS/EOS, `add_bos_token`, chat templates.
//! * [`ChatTemplate`]: the checkpoint's Jinja chat template rendered with `minijinja`, set up to
//!   match transformers' jinja2 environment byte for byte.
//! * [`StreamDecoder`]: ids to text one at a time, never half a UTF-8 character.
//! * [`split_reasoning`] / [`ReasoningParser`]: R1 `<think>…</think>` into reasoning and answer.
//! * [`parse_tool_calls`]: DeepSeek tool-call markup into calls.
//! * [`ChatFormat`]: a Jinja template or DeepSeek's own V3.2 / V4 / V4.1 encoding (those models
//!   ship no template), chosen per tokenizer with [`Tokenizer::with_chat_format`].
//! * [`parse_completion`] / [`CompletionParser`]: a V3.2 / V4 completion into reasoning, content
//!   and DSML tool calls ([`parse_dsml_tool_calls`] for the calls alone).

mod chat_format;
mod completion;
mod deepseek;
mod dsml;
mod error;
mod json;
mod python;
mod reasoning;
mod stream;
mod template;
mod tokenizer;
mod tool_calls;

pub use chat_format::ChatFormat;
pub use completion::{parse_completion, CompletionDelta, CompletionParser, ParsedCompletion};
pub use dsml::{parse_dsml_tool_calls, DsmlDialect, DsmlError, DSML_TOKEN};
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
