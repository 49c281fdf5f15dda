//! Every way a pull or a cache look-up fails, each said in one line.

use std::path::PathBuf;

use thiserror::Error;

/// A failed pull or cache look-up. Messages are one line (lists are cut short).
#[derive(Debug, Error)]
pub enum HubError {
    #[error("invalid model id {0:?}: expected ORG/NAME or ORG/NAME@REVISION")]
    InvalidRepo(String),
    #[error("{var} is not an http(s) URL: {value:?}")]
    InvalidEndpoint { var: &'static str, value: String },
    #[error("cannot find the Hugging Face cache: set HF_HOME (or HF_HUB_CACHE)")]
    NoCacheDir,
    #[error("cannot reach the hub at {endpoint} (offline?): {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("{repo}: {}", auth_message(*.status, *.token_sent))]
    Unauthorized {
        repo: String,
        status: u16,
        token_sent: bool,
    },
    #[error("model {repo} not found on {endpoint}{}", if *.token_sent { "" } else { " (if it is private or gated, set HF_TOKEN)" })]
    RepoNotFound {
        repo: String,
        endpoint: String,
        token_sent: bool,
    },
    #[error("{repo} has no revision {revision:?}")]
    RevisionNotFound { repo: String, revision: String },
    #[error("{repo}: {file} is listed but the hub has no such file")]
    EntryNotFound { repo: String, file: String },
    #[error("{url}: the hub answered HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("unexpected answer from the hub: {0}")]
    BadResponse(String),
    #[error("--include {pattern:?} matches no file in {repo}; its files: {}", list(.files))]
    NoMatch {
        pattern: String,
        repo: String,
        files: Vec<String>,
    },
    #[error("invalid --include pattern {pattern:?}: {detail}")]
    BadPattern { pattern: String, detail: String },
    #[error("{repo} has no safetensors weights and {} GGUF files: pick one with --include (e.g. --include '*Q4_K_M*.gguf'): {}", .ggufs.len(), list(.ggufs))]
    ManyGgufs { repo: String, ggufs: Vec<String> },
    #[error("{repo} has no model weights Moela reads (*.safetensors or *.gguf); its files: {}", list(.files))]
    NoWeights { repo: String, files: Vec<String> },
    #[error("{file}: checksum mismatch ({algo} expected {expected}, got {actual}); the download was removed")]
    ChecksumMismatch {
        file: String,
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{file}: {actual} bytes where the hub lists {expected}; the download was removed")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("the download of {file} was interrupted ({detail}): run the same `moela pull` again to resume it")]
    Interrupted { file: String, detail: String },
    #[error("{revision} of {repo} moved to another commit during the pull: run it again")]
    RevisionMoved { repo: String, revision: String },
    #[error("{}: no space left on device (free some, then run the same command again)", .path.display())]
    DiskFull { path: PathBuf },
    #[error("{} is locked: another `moela pull` is downloading it", .0.display())]
    Locked(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{repo} is not in the Hugging Face cache ({}): run `moela pull {repo}`", .cache.display())]
    NotCached { repo: String, cache: PathBuf },
    #[error("{} holds {} GGUF files: pass one as --model FILE: {}", .snapshot.display(), .files.len(), list(.files))]
    ManyCachedGgufs {
        snapshot: PathBuf,
        files: Vec<String>,
    },
    #[error("{}: neither config.json nor a .gguf file (an incomplete pull? run `moela pull` again)", .0.display())]
    NoModelInSnapshot(PathBuf),
}

impl HubError {
    /// An I/O failure on `path`; a full disk (or quota) is said as such.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                HubError::DiskFull { path }
            }
            _ => HubError::Io { path, source },
        }
    }
}

fn auth_message(status: u16, token_sent: bool) -> &'static str {
    match (status, token_sent) {
        (401, false) => "the hub requires a token (gated or private model): set HF_TOKEN to an access token of an account that may read it",
        (401, true) => "the hub rejected the token in HF_TOKEN (or the token file): check it",
        (_, false) => "access denied (gated model): accept its terms on the hub, then set HF_TOKEN to a token of that account",
        (_, true) => "access denied for this token (gated model): accept its terms on the hub with the account of the token in HF_TOKEN",
    }
}

/// At most 20 names on one line.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", names.len() - SHOWN));
    }
    if s.is_empty() {
        s.push_str("(none)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_named_and_messages_are_one_line() {
        let e = HubError::io(
            "/x/blob",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert!(matches!(e, HubError::DiskFull { .. }), "{e}");
        let files: Vec<String> = (0..30).map(|i| format!("f{i}.bin")).collect();
        let e = HubError::NoMatch {
            pattern: "*.gguf".into(),
            repo: "a/b".into(),
            files,
        };
        let m = e.to_string();
        assert!(!m.contains('\n') && m.contains("f19.bin") && !m.contains("f20.bin"));
        assert!(m.contains("10 more"), "{m}");
    }
}
