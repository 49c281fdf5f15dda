//! `JsonValue`: a JSON value whose objects keep their key order.
//!
//! Templates print tool schemas with `tojson` and iterate dicts with `items()`; Python keeps a
//! dict's insertion order, so to render byte-identically we must too. `serde_json::Value` sorts
//! object keys unless serde_json's `preserve_order` feature is on, so tools and extra template
//! variables are taken as this type instead. Deserialize it straight from the request to keep
//! the client's order; converting from a `serde_json::Value` keeps whatever order that has.

use std::collections::HashMap;
use std::fmt;

use minijinja::Value;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::python::JsonDumps;

/// A JSON value with ordered objects. A repeated key keeps its first position and last value,
/// as Python's `json.loads` does.
#[derive(Clone, Debug, PartialEq)]
pub enum JsonValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<JsonValue>),
    Object(Vec<(String, JsonValue)>),
}

impl JsonValue {
    /// Parses JSON text.
    pub fn parse(text: &str) -> Result<JsonValue, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Python's `json.dumps(value, ensure_ascii=False)`: `", "` and `": "` separators, floats as
    /// Python prints them (`1.0`, `1e+16`), object keys in their order.
    pub(crate) fn to_python_json(&self) -> String {
        let dumps = JsonDumps {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".to_string(),
            key_separator: ": ".to_string(),
            sort_keys: false,
        };
        // A value built from JSON holds only JSON kinds, which always serialize.
        dumps.dumps(&self.to_template_value()).unwrap_or_default()
    }

    /// Python's truthiness of the value (`None`, `False`, `0`, `""`, `[]`, `{}` are false).
    pub(crate) fn truthy(&self) -> bool {
        match self {
            JsonValue::Null => false,
            JsonValue::Bool(b) => *b,
            JsonValue::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            JsonValue::String(s) => !s.is_empty(),
            JsonValue::Array(items) => !items.is_empty(),
            JsonValue::Object(fields) => !fields.is_empty(),
        }
    }

    /// The value of `key` in an object (the last one when a key repeats).
    pub(crate) fn get(&self, key: &str) -> Option<&JsonValue> {
        match self {
            JsonValue::Object(fields) => {
                fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The value as a template variable.
    pub(crate) fn to_template_value(&self) -> Value {
        match self {
            JsonValue::Null => Value::from(()),
            JsonValue::Bool(b) => Value::from(*b),
            JsonValue::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else {
                    Value::from(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            JsonValue::String(s) => Value::from(s.as_str()),
            JsonValue::Array(items) => Value::from(
                items
                    .iter()
                    .map(JsonValue::to_template_value)
                    .collect::<Vec<_>>(),
            ),
            JsonValue::Object(fields) => Value::from_pairs(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.to_template_value())),
            ),
        }
    }
}

impl From<serde_json::Value> for JsonValue {
    fn from(v: serde_json::Value) -> JsonValue {
        match v {
            serde_json::Value::Null => JsonValue::Null,
            serde_json::Value::Bool(b) => JsonValue::Bool(b),
            serde_json::Value::Number(n) => JsonValue::Number(n),
            serde_json::Value::String(s) => JsonValue::String(s),
            serde_json::Value::Array(a) => {
                JsonValue::Array(a.into_iter().map(JsonValue::from).collect())
            }
            serde_json::Value::Object(o) => {
                JsonValue::Object(o.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
        }
    }
}

impl From<bool> for JsonValue {
    fn from(b: bool) -> JsonValue {
        JsonValue::Bool(b)
    }
}

impl From<&str> for JsonValue {
    fn from(s: &str) -> JsonValue {
        JsonValue::String(s.to_string())
    }
}

impl From<String> for JsonValue {
    fn from(s: String) -> JsonValue {
        JsonValue::String(s)
    }
}

impl From<i64> for JsonValue {
    fn from(n: i64) -> JsonValue {
        JsonValue::Number(n.into())
    }
}

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            JsonValue::Null => s.serialize_unit(),
            JsonValue::Bool(b) => s.serialize_bool(*b),
            JsonValue::Number(n) => n.serialize(s),
            JsonValue::String(v) => s.serialize_str(v),
            JsonValue::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            JsonValue::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = JsonValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }

    fn visit_none<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<JsonValue, D::Error> {
        JsonValue::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<JsonValue, E> {
        Ok(JsonValue::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(n.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<JsonValue, E> {
        Ok(serde_json::Number::from_f64(f).map_or(JsonValue::Null, JsonValue::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<JsonValue, E> {
        Ok(JsonValue::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<JsonValue, E> {
        Ok(JsonValue::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(JsonValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
        let mut fields: Vec<(String, JsonValue)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        while let Some((k, v)) = map.next_entry::<String, JsonValue>()? {
            match position.get(&k) {
                Some(&i) => fields[i].1 = v,
                None => {
                    position.insert(k.clone(), fields.len());
                    fields.push((k, v));
                }
            }
        }
        Ok(JsonValue::Object(fields))
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonValue, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}
