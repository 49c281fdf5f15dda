//! Splitting a DeepSeek V3.2 / V4 completion into reasoning, content and DSML tool calls, in
//! one go ([`parse_completion`]) or as it streams ([`CompletionParser`]).
//!
//! Reasoning follows the R1 rules of [`ReasoningParser`]: in thinking mode the prompt ends with
//! `<think>`, and the reasoning runs to the first `</think>`. The content after it is shown as it
//! arrives, except what could still be the start of a DSML block (a partial opening tag, and
//! the whitespace before it, which the encoder writes as `"\n\n"`). From the block's opening tag
//! on, the text is tool-call markup, parsed when the output ends.

use crate::dsml::{find_block, parse_blocks, partial_block_len, DsmlDialect, DsmlError};
use crate::reasoning::ReasoningParser;
use crate::tool_calls::ParsedToolCall;

/// What one streamed delta adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompletionDelta {
    /// New reasoning text.
    pub reasoning: String,
    /// New content text.
    pub content: String,
}

/// A whole completion, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCompletion {
    /// The reasoning; `None` when the output was never in reasoning mode.
    pub reasoning: Option<String>,
    /// The answer text, without the tool-call markup.
    pub content: String,
    /// The tool calls, in order.
    pub tool_calls: Vec<ParsedToolCall>,
}

/// Splits a whole completion. `started_in_reasoning`: the prompt left the model inside `<think>`
/// ([`ChatPrompt::opens_reasoning`](crate::ChatPrompt)). Equals what [`CompletionParser`] gives
/// for the same text fed in any pieces.
pub fn parse_completion(
    text: &str,
    dialect: DsmlDialect,
    started_in_reasoning: bool,
) -> Result<ParsedCompletion, DsmlError> {
    let mut parser = CompletionParser::new(dialect, started_in_reasoning);
    let first = parser.push(text);
    let (last, tool_calls) = parser.finish()?;
    Ok(ParsedCompletion {
        reasoning: parser
            .saw_reasoning()
            .then(|| first.reasoning + &last.reasoning),
        content: first.content + &last.content,
        tool_calls,
    })
}

/// Streaming form of [`parse_completion`]: feed text deltas, show what comes back, and get the
/// tool calls from [`CompletionParser::finish`].
#[derive(Debug, Clone)]
pub struct CompletionParser {
    dialect: DsmlDialect,
    reasoning: ReasoningParser,
    /// Content received but not yet shown (trailing whitespace, a partial block opening).
    pending: String,
    /// The text from the first block opening on.
    markup: Option<String>,
}

impl CompletionParser {
    /// A parser for completions in `dialect`; `started_in_reasoning` as in [`parse_completion`].
    pub fn new(dialect: DsmlDialect, started_in_reasoning: bool) -> CompletionParser {
        CompletionParser {
            dialect,
            reasoning: ReasoningParser::new(started_in_reasoning),
            pending: String::new(),
            markup: None,
        }
    }

    /// Whether any of the output so far is reasoning.
    pub fn saw_reasoning(&self) -> bool {
        self.reasoning.saw_reasoning()
    }

    /// Whether the output is inside the reasoning now.
    pub fn in_reasoning(&self) -> bool {
        self.reasoning.in_reasoning()
    }

    /// Whether a tool-call block has begun (everything from there on is held for
    /// [`CompletionParser::finish`]).
    pub fn in_tool_calls(&self) -> bool {
        self.markup.is_some()
    }

    /// Feeds one delta; returns what can be shown now.
    pub fn push(&mut self, delta: &str) -> CompletionDelta {
        let (reasoning, content) = self.reasoning.push(delta);
        CompletionDelta {
            reasoning,
            content: self.push_content(&content),
        }
    }

    /// The end of the output: the rest of the text, and the tool calls. A malformed block is an
    /// error carrying the markup, which a caller may show as content instead.
    pub fn finish(&mut self) -> Result<(CompletionDelta, Vec<ParsedToolCall>), DsmlError> {
        let (reasoning, content) = self.reasoning.finish();
        let mut content = self.push_content(&content);
        let mut calls = Vec::new();
        match self.markup.take() {
            Some(markup) => {
                let (after, parsed) = parse_blocks(&markup, self.dialect)?;
                content.push_str(&after);
                calls = parsed;
            }
            None => content.push_str(&std::mem::take(&mut self.pending)),
        }
        Ok((CompletionDelta { reasoning, content }, calls))
    }

    fn push_content(&mut self, text: &str) -> String {
        if let Some(markup) = &mut self.markup {
            markup.push_str(text);
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(at) = find_block(&self.pending, self.dialect) {
            let shown = self.pending[..at].trim_end().to_string();
            self.markup = Some(self.pending[at..].to_string());
            self.pending.clear();
            return shown;
        }
        let keep = partial_block_len(&self.pending, self.dialect);
        let cut = self.pending[..self.pending.len() - keep].trim_end().len();
        let shown = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        shown
    }
}
