//! API keys: `Authorization: Bearer KEY` (or `x-api-key: KEY`) on every `/v1/` route when keys
//! are configured.
//!
//! A key file has one key per line, `KEY` or `NAME KEY`; blank lines and `#` comments are
//! skipped. The name (default `key1`, `key2`, … by position; `default` for `--api-key`) labels
//! the key's usage on `/metrics` — the secret itself is never shown.

use std::path::Path;

use crate::util::constant_time_eq;

/// Label of requests when the server has no keys.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read API key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API key file {path}, line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error("API key file {path} holds no keys")]
    Empty { path: String },
    #[error("an API key must not be empty")]
    EmptyKey,
}

#[derive(Clone)]
struct Key {
    name: String,
    secret: String,
}

/// The accepted keys (empty: no authentication).
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

impl ApiKeys {
    pub fn none() -> ApiKeys {
        ApiKeys::default()
    }

    /// One key named `default`.
    pub fn single(secret: &str) -> Result<ApiKeys, KeyError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(KeyError::EmptyKey);
        }
        Ok(ApiKeys {
            keys: vec![Key {
                name: "default".into(),
                secret: secret.into(),
            }],
        })
    }

    pub fn from_file(path: &Path) -> Result<ApiKeys, KeyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: name.clone(),
            source,
        })?;
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (label, secret) = match fields.as_slice() {
                [secret] => (format!("key{}", keys.len() + 1), *secret),
                [label, secret] => (label.to_string(), *secret),
                _ => {
                    return Err(KeyError::Invalid {
                        path: name,
                        line: i + 1,
                        message: "expected `KEY` or `NAME KEY`".into(),
                    })
                }
            };
            if keys.iter().any(|k| k.name == label) {
                return Err(KeyError::Invalid {
                    path: name,
                    line: i + 1,
                    message: format!("the name {label:?} is used twice"),
                });
            }
            keys.push(Key {
                name: label,
                secret: secret.to_string(),
            });
        }
        if keys.is_empty() {
            return Err(KeyError::Empty { path: name });
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The name of the key an `Authorization: Bearer KEY` header value or an `x-api-key: KEY`
    /// header value (Anthropic's spelling) carries, if it is one of ours.
    pub fn check(&self, authorization: Option<&str>, x_api_key: Option<&str>) -> Option<String> {
        let token = match authorization {
            Some(a) => {
                let a = a.trim();
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))?
                    .trim()
            }
            None => x_api_key?.trim(),
        };
        // Compare with every key so the time taken does not tell which one matched.
        let mut found = None;
        for k in &self.keys {
            if constant_time_eq(k.secret.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(k.name.clone());
            }
        }
        found
    }
}
