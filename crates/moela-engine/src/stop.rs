//! Stop conditions: the token ids that end generation, and stop strings over streamed text
//! (text that might be the start of a stop string is held back until it is known not to be one).

/// The token ids that end generation: the tokenizer's end-of-sequence ids, then the model
/// config's (`eos_token_id`, one or several) that the tokenizer does not already list.
pub fn stop_token_ids(tokenizer: &moela_text::Tokenizer, config: &moela_model::Config) -> Vec<u32> {
    let mut ids = tokenizer.eos_ids().to_vec();
    for &e in &config.eos_token_ids {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
}

/// Streams text through, ending at the first occurrence of any stop string.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    /// The stop string that ended the text, once one was seen.
    matched: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that ended the text (the earliest in the text; of two starting there,
    /// the first given).
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Feeds new text; returns what can be emitted now (never any part of a stop string).
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped() {
            return String::new();
        }
        self.pending.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = first {
            self.matched = Some(stop.clone());
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return out;
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        out
    }

    /// End of generation: releases whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], parts: &[&str]) -> (String, bool) {
        let (out, matched) = run_matched(stops, parts);
        (out, matched.is_some())
    }

    fn run_matched(stops: &[&str], parts: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out: String = parts.iter().map(|p| m.push(p)).collect();
        let matched = m.matched().map(str::to_string);
        assert_eq!(m.stopped(), matched.is_some());
        out.push_str(&m.finish());
        (out, matched)
    }

    #[test]
    fn stops_across_chunks_and_hides_the_stop() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "D tail"]),
            ("abc ".into(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_not_a_stop() {
        assert_eq!(run(&["END"], &["abc EN", "X"]), ("abc ENX".into(), false));
        assert_eq!(run(&["END"], &["abc EN"]), ("abc EN".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["a b zz"]), ("a ".into(), true));
        // The one that ended the text is reported (for Anthropic's `stop_sequence`).
        assert_eq!(
            run_matched(&["zz", "b"], &["a ", "z", "z b"]),
            ("a ".into(), Some("zz".into()))
        );
        assert_eq!(
            run_matched(&["zz", "b"], &["a b zz"]),
            ("a ".into(), Some("b".into()))
        );
        assert_eq!(run_matched(&["zz"], &["a z"]), ("a z".into(), None));
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(run(&["。"], &["你好", "。再见"]), ("你好".into(), true));
    }
}
