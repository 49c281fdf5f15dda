//! The sampling a model's authors recommend: Hugging Face `generation_config.json`
//! (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`; DeepSeek ships temperature
//! 0.6 and top_p 0.95) or GGUF `general.sampling.*` (llama.cpp's converter copies those fields
//! there). Commands and the server use a value only where the user gave none.

use serde_json::Value;

use crate::error::ModelError;

/// Recommended sampling values; `None` where the model says nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// `v` if it is finite and within `lo..=hi` (`lo` excluded when `open_lo`), else an error naming
/// `field` of `source`.
fn checked(
    source: &str,
    field: &str,
    v: f64,
    (lo, hi, open_lo): (f64, f64, bool),
) -> Result<f32, ModelError> {
    let ok = v.is_finite() && v <= hi && if open_lo { v > lo } else { v >= lo };
    if ok {
        Ok(v as f32)
    } else {
        let range = format!("{}{lo}, {hi}]", if open_lo { "(" } else { "[" });
        Err(ModelError::Config {
            field: format!("{source} {field}"),
            msg: format!("{v} is outside {range}"),
        })
    }
}

impl SamplingDefaults {
    /// Reads `generation_config.json`'s values (`source` names the file in errors). Fields
    /// absent or `null` stay `None`; `top_k` 0 means off and is kept as 0.
    pub fn from_generation_config(source: &str, v: &Value) -> Result<Self, ModelError> {
        let num = |field: &str| v.get(field).and_then(Value::as_f64);
        let mut d = SamplingDefaults::default();
        if let Some(t) = num("temperature") {
            d.temperature = Some(checked(source, "temperature", t, (0.0, 100.0, false))?);
        }
        if let Some(p) = num("top_p") {
            d.top_p = Some(checked(source, "top_p", p, (0.0, 1.0, true))?);
        }
        if let Some(p) = num("min_p") {
            d.min_p = Some(checked(source, "min_p", p, (0.0, 1.0, false))?);
        }
        if let Some(p) = num("repetition_penalty") {
            d.repetition_penalty = Some(checked(
                source,
                "repetition_penalty",
                p,
                (0.0, 100.0, true),
            )?);
        }
        if let Some(k) = v.get("top_k").filter(|k| !k.is_null()) {
            let k = k.as_u64().ok_or_else(|| ModelError::Config {
                field: format!("{source} top_k"),
                msg: format!("{k} is not a non-negative integer"),
            })?;
            d.top_k = Some(usize::try_from(k).unwrap_or(usize::MAX));
        }
        Ok(d)
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        *self == SamplingDefaults::default()
    }

    /// `temperature 0.6, top_p 0.95` for the values that are set.
    pub fn describe(&self) -> String {
        let fields = [
            ("temperature", self.temperature.map(|v| v.to_string())),
            ("top_k", self.top_k.map(|v| v.to_string())),
            ("top_p", self.top_p.map(|v| v.to_string())),
            ("min_p", self.min_p.map(|v| v.to_string())),
            (
                "repetition_penalty",
                self.repetition_penalty.map(|v| v.to_string()),
            ),
        ];
        let set: Vec<String> = fields
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n} {v}")))
            .collect();
        set.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_deepseeks_generation_config() {
        let v = json!({"bos_token_id": 0, "do_sample": true, "temperature": 0.6, "top_p": 0.95});
        let d = SamplingDefaults::from_generation_config("g", &v).unwrap();
        assert_eq!(d.temperature, Some(0.6));
        assert_eq!(d.top_p, Some(0.95));
        assert_eq!((d.top_k, d.min_p, d.repetition_penalty), (None, None, None));
        assert_eq!(d.describe(), "temperature 0.6, top_p 0.95");
        let none = SamplingDefaults::from_generation_config("g", &json!({"do_sample": false}));
        assert!(none.unwrap().is_empty());
    }

    #[test]
    fn refuses_impossible_values_naming_them() {
        for (field, bad) in [
            ("temperature", json!(-1.0)),
            ("top_p", json!(0.0)),
            ("top_p", json!(1.5)),
            ("min_p", json!(2.0)),
            ("repetition_penalty", json!(0.0)),
            ("top_k", json!(-3)),
        ] {
            let e = SamplingDefaults::from_generation_config(
                "generation_config.json",
                &json!({field: bad}),
            )
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("generation_config.json {field}")),
                "{e}"
            );
        }
    }
}
