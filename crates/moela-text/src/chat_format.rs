//! [`ChatFormat`]: how a conversation becomes a prompt — the checkpoint's Jinja template, or one
//! of DeepSeek's own encodings for the models that ship none (V3.2, V4).

use crate::deepseek::{self, Version};
use crate::dsml::DsmlDialect;
use crate::error::Result;
use crate::template::{ChatMessage, ChatTemplate, RenderOptions};

/// How a tokenizer renders chat messages.
#[derive(Clone, Debug)]
pub enum ChatFormat {
    /// The checkpoint's Jinja chat template.
    Jinja(ChatTemplate),
    /// DeepSeek V3.2's encoder (`encoding_dsv32.py`); tool calls in DSML `function_calls`.
    DeepseekV32,
    /// DeepSeek V4's encoder; tool calls in DSML `tool_calls`.
    DeepseekV4,
    /// DeepSeek V4.1's encoder; `<｜System｜>`, numeric reasoning effort, DSML ` calls`.
    DeepseekV41,
}

impl ChatFormat {
    /// The DeepSeek encoding a checkpoint's `model_type` needs, if any: `deepseek_v32` →
    /// [`ChatFormat::DeepseekV32`], `deepseek_v4` → [`ChatFormat::DeepseekV4`]. (V4.1 shares
    /// V4's `model_type`; choose it by name.)
    pub fn for_model_type(model_type: &str) -> Option<ChatFormat> {
        match model_type {
            "deepseek_v32" => Some(ChatFormat::DeepseekV32),
            "deepseek_v4" => Some(ChatFormat::DeepseekV4),
            _ => None,
        }
    }

    /// A DeepSeek encoding by its [`ChatFormat::name`] (`deepseek_v32`, `deepseek_v4`,
    /// `deepseek_v41`), e.g. from a command-line flag.
    pub fn deepseek_by_name(name: &str) -> Option<ChatFormat> {
        match name {
            "deepseek_v32" => Some(ChatFormat::DeepseekV32),
            "deepseek_v4" => Some(ChatFormat::DeepseekV4),
            "deepseek_v41" => Some(ChatFormat::DeepseekV41),
            _ => None,
        }
    }

    /// `jinja`, `deepseek_v32`, `deepseek_v4` or `deepseek_v41`.
    pub fn name(&self) -> &'static str {
        match self {
            ChatFormat::Jinja(_) => "jinja",
            ChatFormat::DeepseekV32 => "deepseek_v32",
            ChatFormat::DeepseekV4 => "deepseek_v4",
            ChatFormat::DeepseekV41 => "deepseek_v41",
        }
    }

    /// The DSML dialect this format's model writes tool calls in (`None` for Jinja templates:
    /// their models use `<｜tool▁calls▁begin｜>`, see [`parse_tool_calls`](crate::parse_tool_calls)).
    pub fn dsml_dialect(&self) -> Option<DsmlDialect> {
        self.deepseek_version().map(Version::dialect)
    }

    /// Renders the conversation to the prompt text. The DeepSeek encoders write BOS themselves
    /// (encode the text without adding special tokens) and fail, as DeepSeek's do, on
    /// conversations they cannot express (e.g. a tool result without a call).
    pub fn render(&self, messages: &[ChatMessage], opts: &RenderOptions) -> Result<String> {
        match self {
            ChatFormat::Jinja(template) => template.render(messages, opts),
            ChatFormat::DeepseekV32 => deepseek::render(Version::V32, messages, opts),
            ChatFormat::DeepseekV4 => deepseek::render(Version::V4, messages, opts),
            ChatFormat::DeepseekV41 => deepseek::render(Version::V41, messages, opts),
        }
    }

    fn deepseek_version(&self) -> Option<Version> {
        match self {
            ChatFormat::Jinja(_) => None,
            ChatFormat::DeepseekV32 => Some(Version::V32),
            ChatFormat::DeepseekV4 => Some(Version::V4),
            ChatFormat::DeepseekV41 => Some(Version::V41),
        }
    }
}
