//! Optional cost accounting, DeepSeek style: prices per million cache-hit input, cache-miss
//! input and output tokens, and off-peak windows (UTC) with a discount.
//!
//! The price file is JSON:
//! ```json
//! {"currency": "USD", "input_cache_hit": 0.07, "input_cache_miss": 0.27, "output": 1.10,
//!  "off_peak": [{"start": "16:30", "end": "00:30", "discount": 0.5}]}
//! ```
//! `discount` is the fraction taken off (0.5 = half price); a window may cross midnight. A
//! request is priced at the time it finishes.

use std::path::Path;

use serde::Deserialize;

use crate::protocol::CostOut;

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read price file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("price file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// An off-peak window in minutes after midnight UTC, `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct OffPeak {
    pub start_min: u32,
    pub end_min: u32,
    pub discount: f64,
}

impl OffPeak {
    fn contains(&self, minute: u32) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

/// Prices per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    pub currency: String,
    pub input_cache_hit: f64,
    pub input_cache_miss: f64,
    pub output: f64,
    pub off_peak: Vec<OffPeak>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    start: String,
    end: String,
    discount: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[serde(default = "usd")]
    currency: String,
    input_cache_hit: f64,
    input_cache_miss: f64,
    output: f64,
    #[serde(default)]
    off_peak: Vec<RawWindow>,
}

fn usd() -> String {
    "USD".into()
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl PriceTable {
    pub fn from_file(path: &Path) -> Result<PriceTable, PriceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Io {
            path: name.clone(),
            source,
        })?;
        PriceTable::parse(&text).map_err(|message| PriceError::Invalid {
            path: name,
            message,
        })
    }

    pub fn parse(text: &str) -> Result<PriceTable, String> {
        let raw: RawTable = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (name, v) in [
            ("input_cache_hit", raw.input_cache_hit),
            ("input_cache_miss", raw.input_cache_miss),
            ("output", raw.output),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a price >= 0, got {v}"));
            }
        }
        let mut off_peak = Vec::new();
        for (i, w) in raw.off_peak.iter().enumerate() {
            let time = |s: &str| {
                parse_hhmm(s).ok_or_else(|| format!("off_peak[{i}]: {s:?} is not a HH:MM time"))
            };
            let (start_min, end_min) = (time(&w.start)?, time(&w.end)?);
            if !(0.0..=1.0).contains(&w.discount) {
                return Err(format!(
                    "off_peak[{i}].discount must be between 0 and 1 (the fraction taken off), got {}",
                    w.discount
                ));
            }
            off_peak.push(OffPeak {
                start_min,
                end_min,
                discount: w.discount,
            });
        }
        Ok(PriceTable {
            currency: raw.currency,
            input_cache_hit: raw.input_cache_hit,
            input_cache_miss: raw.input_cache_miss,
            output: raw.output,
            off_peak,
        })
    }

    /// The discount in force at `unix_secs` (the first matching window's).
    pub fn discount_at(&self, unix_secs: u64) -> f64 {
        let minute = ((unix_secs % 86_400) / 60) as u32;
        self.off_peak
            .iter()
            .find(|w| w.contains(minute))
            .map_or(0.0, |w| w.discount)
    }

    /// The cost of a request that finished at `unix_secs`.
    pub fn cost(
        &self,
        cache_hit: usize,
        cache_miss: usize,
        output: usize,
        unix_secs: u64,
    ) -> CostOut {
        let discount = self.discount_at(unix_secs);
        let f = (1.0 - discount) / 1e6;
        let input_cache_hit = cache_hit as f64 * self.input_cache_hit * f;
        let input_cache_miss = cache_miss as f64 * self.input_cache_miss * f;
        let output = output as f64 * self.output * f;
        CostOut {
            currency: self.currency.clone(),
            input_cache_hit,
            input_cache_miss,
            output,
            total: input_cache_hit + input_cache_miss + output,
            discount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"{"currency": "USD", "input_cache_hit": 0.07, "input_cache_miss": 0.27,
        "output": 1.10, "off_peak": [{"start": "16:30", "end": "00:30", "discount": 0.5}]}"#;

    #[test]
    fn prices_per_million_with_off_peak_window_across_midnight() {
        let t = PriceTable::parse(TABLE).unwrap();
        let noon = 12 * 3600;
        let c = t.cost(1_000_000, 2_000_000, 1_000_000, noon);
        assert!((c.total - (0.07 + 0.54 + 1.10)).abs() < 1e-9, "{c:?}");
        assert_eq!(c.discount, 0.0);
        for (h, m, off) in [
            (16, 29, false),
            (16, 30, true),
            (23, 59, true),
            (0, 0, true),
            (0, 30, false),
        ] {
            let at = 86_400 * 7 + h * 3600 + m * 60;
            assert_eq!(t.discount_at(at) == 0.5, off, "{h}:{m}");
        }
        let night = t.cost(0, 0, 1_000_000, 20 * 3600);
        assert!((night.total - 0.55).abs() < 1e-9);
    }

    #[test]
    fn bad_tables_are_rejected_with_the_field() {
        for (text, needle) in [
            (
                r#"{"input_cache_hit": -1, "input_cache_miss": 0, "output": 0}"#,
                "input_cache_hit",
            ),
            (
                r#"{"input_cache_hit": 0, "input_cache_miss": 0, "output": 0, "off_peak": [{"start": "25:00", "end": "01:00", "discount": 0.5}]}"#,
                "25:00",
            ),
            (
                r#"{"input_cache_hit": 0, "input_cache_miss": 0, "output": 0, "off_peak": [{"start": "01:00", "end": "02:00", "discount": 1.5}]}"#,
                "discount",
            ),
            (r#"{"input_cache_hit": 0, "input_cache_miss": 0}"#, "output"),
            (
                r#"{"input_cache_hit": 0, "input_cache_miss": 0, "output": 0, "extra": 1}"#,
                "extra",
            ),
        ] {
            let e = PriceTable::parse(text).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
