//! Splitting R1-style output into reasoning and answer.
//!
//! R1 writes `<think>…</think>` before its answer. The R1 chat template's generation prompt
//! already ends with `<think>\n`, so the output usually has only the closing tag. Rules:
//!
//! * The output is in reasoning mode when the prompt opened it (`started_in_reasoning`, see
//!   [`prompt_opens_reasoning`]) or when it starts with `<think>` (leading whitespace allowed;
//!   the tag and that whitespace are dropped).
//! * In reasoning mode everything up to the first `</think>` is reasoning and everything after
//!   it is content (both verbatim, e.g. content usually starts with `"\n\n"`). Without
//!   `</think>` it is all reasoning.
//! * Otherwise it is all content, a stray `</think>` included: a stream cannot know about a
//!   `</think>` that has not arrived yet, and [`ReasoningParser`] must agree with
//!   [`split_reasoning`].

/// Opening reasoning tag.
pub const THINK_OPEN: &str = "<think>";
/// Closing reasoning tag.
pub const THINK_CLOSE: &str = "</think>";

/// Whether a rendered prompt leaves the model inside `<think>` (it ends with an unclosed
/// `<think>`, trailing whitespace aside), as R1's generation prompt `<｜Assistant｜><think>\n` does.
pub fn prompt_opens_reasoning(prompt: &str) -> bool {
    prompt.trim_end().ends_with(THINK_OPEN)
}

/// Splits a complete output into `(reasoning, content)`; `reasoning` is `None` when the output
/// was never in reasoning mode.
pub fn split_reasoning(text: &str, started_in_reasoning: bool) -> (Option<String>, String) {
    let (in_reasoning, body) = match text.trim_start().strip_prefix(THINK_OPEN) {
        Some(rest) => (true, rest),
        None => (started_in_reasoning, text),
    };
    if !in_reasoning {
        return (None, text.to_string());
    }
    match body.split_once(THINK_CLOSE) {
        Some((reasoning, content)) => (Some(reasoning.to_string()), content.to_string()),
        None => (Some(body.to_string()), String::new()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet known whether the output opens with `<think>`.
    Start,
    Reasoning,
    Content,
}

/// Streaming form of [`split_reasoning`]: feed text deltas, get `(reasoning_delta,
/// content_delta)`. Tags split across deltas are held back until they are complete or ruled
/// out. The concatenated deltas (plus [`ReasoningParser::finish`]) equal `split_reasoning` of
/// the concatenated input.
#[derive(Debug, Clone)]
pub struct ReasoningParser {
    started_in_reasoning: bool,
    state: State,
    /// Text received but not yet emitted.
    pending: String,
    saw_reasoning: bool,
}

impl ReasoningParser {
    /// `started_in_reasoning`: the prompt opened `<think>` (see [`prompt_opens_reasoning`]).
    pub fn new(started_in_reasoning: bool) -> ReasoningParser {
        ReasoningParser {
            started_in_reasoning,
            state: State::Start,
            pending: String::new(),
            saw_reasoning: false,
        }
    }

    /// Whether any of the output so far is reasoning (the `Some` of [`split_reasoning`]).
    pub fn saw_reasoning(&self) -> bool {
        self.saw_reasoning
    }

    /// Whether the parser is currently inside the reasoning part.
    pub fn in_reasoning(&self) -> bool {
        match self.state {
            State::Reasoning => true,
            State::Start => self.started_in_reasoning,
            State::Content => false,
        }
    }

    /// Feeds one delta; returns `(reasoning_delta, content_delta)`.
    pub fn push(&mut self, delta: &str) -> (String, String) {
        self.pending.push_str(delta);
        let mut reasoning = String::new();
        let mut content = String::new();
        if self.state == State::Start {
            let trimmed = self.pending.trim_start();
            if let Some(rest) = trimmed.strip_prefix(THINK_OPEN) {
                self.pending = rest.to_string();
                self.enter_reasoning();
            } else if THINK_OPEN.starts_with(trimmed) {
                // Empty, whitespace, or a prefix of `<think>`: wait.
                return (reasoning, content);
            } else if self.started_in_reasoning {
                self.enter_reasoning();
            } else {
                self.state = State::Content;
            }
        }
        if self.state == State::Reasoning {
            if let Some((before, after)) = self.pending.split_once(THINK_CLOSE) {
                reasoning.push_str(before);
                content.push_str(after);
                self.pending.clear();
                self.state = State::Content;
            } else {
                let keep = partial_suffix_len(&self.pending, THINK_CLOSE);
                let emit = self.pending.len() - keep;
                reasoning.push_str(&self.pending[..emit]);
                self.pending.drain(..emit);
            }
            return (reasoning, content);
        }
        content.push_str(&self.pending);
        self.pending.clear();
        (reasoning, content)
    }

    /// Flushes held-back text at the end of the output.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.pending);
        let in_reasoning = match self.state {
            State::Start => self.started_in_reasoning,
            State::Reasoning => true,
            State::Content => false,
        };
        if in_reasoning {
            self.saw_reasoning = true;
            (rest, String::new())
        } else {
            (String::new(), rest)
        }
    }

    fn enter_reasoning(&mut self) {
        self.state = State::Reasoning;
        self.saw_reasoning = true;
    }
}

/// Length of the longest proper prefix of `tag` that `text` ends with (the part of a tag that
/// may be completed by the next delta). Always a char boundary of `text`.
pub(crate) fn partial_suffix_len(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .filter(|&n| tag.is_char_boundary(n))
        .find(|&n| text.ends_with(&tag[..n]))
        .unwrap_or(0)
}
