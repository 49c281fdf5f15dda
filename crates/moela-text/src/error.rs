//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong turning text into ids and back, or rendering a chat template.
///
/// Messages name the file (or the in-memory source) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON, or not the shape we expect.
    #[error("{source_name}: invalid JSON: {message}")]
    Json {
        source_name: String,
        message: String,
    },
    /// `tokenizer.json` was rejected by the `tokenizers` library.
    #[error("{source_name}: not a usable tokenizer: {message}")]
    Tokenizer {
        source_name: String,
        message: String,
    },
    /// `tokenizer_config.json` is valid JSON but a field is wrong.
    #[error("{source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    /// Encoding text failed inside the tokenizer.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Decoding ids failed inside the tokenizer.
    #[error("decoding failed: {0}")]
    Decode(String),
    /// The chat template does not parse.
    #[error("chat template {name}: does not compile: {message}")]
    TemplateSyntax { name: String, message: String },
    /// Rendering the chat template failed; this includes the template's own `raise_exception`.
    #[error("chat template {name}: {message}")]
    TemplateRender { name: String, message: String },
    /// A DeepSeek chat encoder (V3.2, V4) cannot render these messages: the cases where
    /// DeepSeek's reference encoder raises.
    #[error("chat encoding: {message}")]
    ChatEncoding { message: String },
    /// Model output holds DSML tool-call markup that does not follow the format.
    #[error(transparent)]
    Dsml(#[from] crate::dsml::DsmlError),
    /// The tokenizer has no chat template, but one was needed.
    #[error("this tokenizer has no chat template")]
    NoChatTemplate,
}

/// Result with [`TextError`].
pub type Result<T, E = TextError> = std::result::Result<T, E>;
