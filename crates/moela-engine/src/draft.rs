//! Speculative decoding: drafts proposed for a decoding sequence, verified by the model in the
//! same step as its last token.
//!
//! A sequence that decodes feeds `[last, d₁ … d_k]` (its last sampled token and k drafted ones)
//! and asks for the logits of every row. Row j is the model's distribution for the token after
//! `d_j`, so the engine walks the rows in order: the sampler picks a token from row j with
//! `d_{j+1}` proposed ([`crate::Sampler::verify`]: the argmax at temperature 0, speculative
//! sampling's rejection rule otherwise); a match moves on to row j + 1, the first mismatch is
//! emitted as the correction and ends the walk, and when every draft matches, row k gives one
//! more token. The cache then drops the rows of the rejected drafts ([`SeqCache::truncate`]).
//! Output tokens are exactly those of one-token steps: at temperature 0 identical, with
//! sampling identically distributed.
//!
//! [`SeqCache::truncate`]: moela_model::SeqCache::truncate

/// Where drafts come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftMode {
    /// No drafting: one token per step.
    #[default]
    None,
    /// Prompt lookup: the continuation of the latest earlier occurrence of the context's last
    /// tokens ([`ngram_draft`]).
    Ngram,
    /// The model's own Multi-Token Prediction layer (`mtp.rs`), when it has one.
    Mtp,
}

impl DraftMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DraftMode::None => "none",
            DraftMode::Ngram => "ngram",
            DraftMode::Mtp => "mtp",
        }
    }
}

impl std::str::FromStr for DraftMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(DraftMode::None),
            "ngram" => Ok(DraftMode::Ngram),
            "mtp" => Ok(DraftMode::Mtp),
            _ => Err(format!(
                "unknown draft mode {s:?} (expected mtp, ngram or none)"
            )),
        }
    }
}

/// Speculative decoding settings of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DraftConfig {
    pub mode: DraftMode,
    /// Tokens drafted per step (k), at most.
    pub tokens: usize,
}

/// Drafted tokens per step by default.
pub const DEFAULT_DRAFT_TOKENS: usize = 3;

impl Default for DraftConfig {
    fn default() -> Self {
        DraftConfig {
            mode: DraftMode::None,
            tokens: DEFAULT_DRAFT_TOKENS,
        }
    }
}

/// A source of drafts computed from the tokens alone (prompt lookup; a caller's own, through
/// [`crate::Engine::set_drafter`]).
pub trait Drafter: Send + Sync {
    /// Up to `k` tokens proposed to follow `context` (everything the sequence has seen: its
    /// prompt, then what it generated).
    fn draft(&self, context: &[u32], k: usize) -> Vec<u32>;
}

/// Prompt lookup ([`ngram_draft`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PromptLookup;

impl Drafter for PromptLookup {
    fn draft(&self, context: &[u32], k: usize) -> Vec<u32> {
        ngram_draft(context, k)
    }
}

/// The longest suffix of the context that prompt lookup matches, in tokens.
pub const NGRAM_MAX: usize = 4;
/// The shortest suffix it matches (a single token proposes too much noise).
pub const NGRAM_MIN: usize = 2;

/// Prompt-lookup drafting: for `n` from [`NGRAM_MAX`] down to [`NGRAM_MIN`], the latest earlier
/// occurrence of the context's last `n` tokens, and up to `k` tokens that followed it; empty
/// when no suffix recurs. `context` is everything the sequence has seen (prompt, then generated).
pub fn ngram_draft(context: &[u32], k: usize) -> Vec<u32> {
    let len = context.len();
    if k == 0 {
        return Vec::new();
    }
    for n in (NGRAM_MIN..=NGRAM_MAX.min(len.saturating_sub(1))).rev() {
        let suffix = &context[len - n..];
        // Occurrences ending before the suffix itself, latest first.
        let found = (0..len - n).rev().find(|&i| &context[i..i + n] == suffix);
        if let Some(i) = found {
            let from = i + n;
            return context[from..(from + k).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match() {
        // "1 2 3 9 | 1 2 3 7 8 | 1 2 3": the latest earlier "1 2 3" was followed by 7 8 1.
        let ctx = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(ngram_draft(&ctx, 3), vec![7, 8, 1]);
        assert_eq!(ngram_draft(&ctx, 1), vec![7]);
        assert_eq!(ngram_draft(&ctx, 0), Vec::<u32>::new());
    }

    #[test]
    fn prefers_the_longest_suffix() {
        // "5 6" last occurred before 1, but "4 5 6" (longer) occurred before 2.
        let ctx = [4, 5, 6, 2, 0, 5, 6, 1, 4, 5, 6];
        assert_eq!(ngram_draft(&ctx, 1), vec![2]);
    }

    #[test]
    fn stops_at_the_end_of_the_context_and_needs_a_repeat() {
        // "7 7" recurs at the end: what follows the previous one reaches the context's end.
        assert_eq!(ngram_draft(&[7, 7, 7], 4), vec![7]);
        assert_eq!(ngram_draft(&[1, 2, 3, 4], 2), Vec::<u32>::new());
        assert_eq!(ngram_draft(&[1], 2), Vec::<u32>::new());
        assert_eq!(ngram_draft(&[], 2), Vec::<u32>::new());
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!("ngram".parse::<DraftMode>(), Ok(DraftMode::Ngram));
        assert_eq!("none".parse::<DraftMode>(), Ok(DraftMode::None));
        assert!("eagle".parse::<DraftMode>().unwrap_err().contains("eagle"));
    }
}
