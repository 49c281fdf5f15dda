//! Streaming detokenization: text out as ids come in, never half a character.
//!
//! Byte-level BPE can split one UTF-8 character over several tokens; decoding such a token on
//! its own gives U+FFFD. The decoder keeps a small window of ids: it decodes the window with and
//! without the newest ids and emits the difference only once it does not end in U+FFFD. The
//! window restarts where the last emission ended (always a character boundary), so memory stays
//! bounded. Concatenating every `push` and the final `finish` equals `decode(all_ids)` for
//! byte-level tokenizers (the DeepSeek ones).

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Incremental detokenizer for one sequence. Create with [`Tokenizer::stream_decoder`].
#[derive(Debug)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    /// Ids from the start of the window on.
    ids: Vec<u32>,
    /// `ids[..read_offset]` has been emitted as text.
    read_offset: usize,
}

impl StreamDecoder {
    /// A decoder with no ids yet.
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read_offset: 0,
        }
    }

    /// Adds one id; returns the text it completes (often empty, sometimes several characters).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let (prefix, full) = self.decode_window()?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let delta = suffix_after(&full, &prefix);
        // The next window starts at the ids that produced this delta: decoding them again gives
        // the context some decoders need (e.g. leading-space rules).
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Emits whatever is still held back (an incomplete character becomes U+FFFD, as in
    /// `decode`). The decoder can be reused afterwards for more ids.
    pub fn finish(&mut self) -> Result<String> {
        let (prefix, full) = self.decode_window()?;
        let delta = suffix_after(&full, &prefix);
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Decodes the window without and with the ids not yet emitted.
    fn decode_window(&self) -> Result<(String, String)> {
        let prefix = self
            .tokenizer
            .decode(&self.ids[..self.read_offset], self.skip_special_tokens)?;
        let full = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        Ok((prefix, full))
    }
}

/// `full` minus its leading `prefix`. Should a decoder ever rewrite earlier text, emit what
/// follows the longest common prefix instead.
fn suffix_after(full: &str, prefix: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common: usize = full
        .char_indices()
        .zip(prefix.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8());
    full[common..].to_string()
}
