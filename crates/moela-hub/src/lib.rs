//! `moela pull`: models fetched from a Hugging Face hub into the standard HF cache
//! (`$HF_HOME/hub/models--ORG--NAME/{blobs,snapshots/<commit>,refs/<revision>}`, the layout
//! `huggingface_hub` and transformers read), and `--model ORG/NAME[@REV]` found there.
//!
//! The transfer itself (metadata request, `.part` file resumed by HTTP Range, blob + snapshot
//! symlink + ref) is the `hf-hub` crate's sync API; this crate adds the listing with checksums,
//! the file selection, verification (sha256 of LFS files, git blob ids of the others, sizes),
//! `HF_TOKEN`, and errors that say what to do.

mod cache;
mod error;
mod pull;
mod select;

pub use cache::{resolve_cached, CachedModel};
pub use error::HubError;
pub use pull::{pull, PullOptions, Pulled, PulledFile};
pub use select::Selection;

use std::path::PathBuf;

/// `ORG/NAME[@REVISION]`: a model repository on the hub and a branch, tag or commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    /// `ORG/NAME`.
    pub id: String,
    /// `main` unless given.
    pub revision: String,
}

impl RepoRef {
    /// Parses `ORG/NAME` or `ORG/NAME@REVISION` (names of letters, digits, `-`, `_`, `.`;
    /// revisions may also hold `/`, as in `refs/pr/1`).
    pub fn parse(s: &str) -> Result<Self, HubError> {
        let bad = || HubError::InvalidRepo(s.to_string());
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (s, "main"),
        };
        let (org, name) = id.split_once('/').ok_or_else(bad)?;
        if !valid_name(org) || !valid_name(name) || !valid_revision(revision) {
            return Err(bad());
        }
        Ok(RepoRef {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// `models--ORG--NAME`: the repository's folder in the cache.
    pub fn folder(&self) -> String {
        format!("models--{}", self.id.replace('/', "--"))
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.revision.as_str() {
            "main" => write!(f, "{}", self.id),
            rev => write!(f, "{}@{rev}", self.id),
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && s.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Where and how to reach the hub, from the environment as `huggingface_hub` reads it.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, default `https://huggingface.co` (no trailing `/`).
    pub endpoint: String,
    /// The hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file (`HF_TOKEN_PATH`, else `$HF_HOME/token`).
    pub token: Option<String>,
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubSettings {
    pub fn from_env() -> Result<Self, HubError> {
        let endpoint = match var("HF_ENDPOINT") {
            None => DEFAULT_ENDPOINT.to_string(),
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => {
                e.trim_end_matches('/').to_string()
            }
            Some(value) => {
                return Err(HubError::InvalidEndpoint {
                    var: "HF_ENDPOINT",
                    value,
                })
            }
        };
        let token = match var("HF_TOKEN") {
            Some(t) => Some(t.trim().to_string()),
            None => {
                let path = var_path("HF_TOKEN_PATH").or_else(|| hf_home().map(|h| h.join("token")));
                path.and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            }
        };
        Ok(HubSettings {
            endpoint,
            cache: cache_dir()?,
            token,
        })
    }
}

/// The hub cache directory (`HF_HUB_CACHE`, else `$HF_HOME/hub`, `$HF_HOME` defaulting to
/// `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`).
pub fn cache_dir() -> Result<PathBuf, HubError> {
    var_path("HF_HUB_CACHE")
        .or_else(|| hf_home().map(|h| h.join("hub")))
        .ok_or(HubError::NoCacheDir)
}

fn hf_home() -> Option<PathBuf> {
    var_path("HF_HOME")
        .or_else(|| var_path("XDG_CACHE_HOME").map(|c| c.join("huggingface")))
        .or_else(|| var_path("HOME").map(|h| h.join(".cache/huggingface")))
}

/// A set, non-empty environment variable.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn var_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_revisions() {
        let r = RepoRef::parse("deepseek-ai/DeepSeek-V3").unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("deepseek-ai/DeepSeek-V3", "main")
        );
        assert_eq!(r.folder(), "models--deepseek-ai--DeepSeek-V3");
        assert_eq!(r.to_string(), "deepseek-ai/DeepSeek-V3");
        let r = RepoRef::parse("org/m.v1_x@refs/pr/1").unwrap();
        assert_eq!(r.revision, "refs/pr/1");
        assert_eq!(r.to_string(), "org/m.v1_x@refs/pr/1");
        for bad in [
            "",
            "org",
            "/name",
            "org/",
            "a/b/c",
            "./x",
            "../x/y",
            "org/na me",
            "org/..",
            "org/x@",
            "org/x@../main",
            "org/x@a//b",
            "org/x@/a",
            "a--b/c",
            "org/x@v1?x",
            "-org/x",
        ] {
            assert!(RepoRef::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
