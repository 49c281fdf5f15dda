//! The hub's file listing (`GET /api/models/{repo}/revision/{rev}?blobs=true`) and which of
//! its files a pull fetches.

use serde::Deserialize;

use crate::HubError;

/// The listing's part a pull uses.
#[derive(Debug, Deserialize)]
pub(crate) struct Listing {
    /// The commit the revision points at.
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Sibling {
    pub rfilename: String,
    /// The git blob id (for an LFS file: its pointer's).
    #[serde(rename = "blobId", default)]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Lfs {
    pub sha256: String,
    pub size: u64,
}

/// How a file's content is checked; the digest is also the blob's name in the cache (the
/// hub's `X-Linked-Etag` for LFS files, `ETag` for the others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Checksum {
    /// An LFS file's sha256.
    Sha256(String),
    /// A git blob id: sha1 of `blob <len>\0<content>`.
    GitSha1(String),
}

impl Checksum {
    pub fn digest(&self) -> &str {
        match self {
            Checksum::Sha256(d) | Checksum::GitSha1(d) => d,
        }
    }
}

/// A file chosen for the pull, with what it must be.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub name: String,
    pub size: u64,
    pub checksum: Checksum,
}

/// Which files to fetch.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Config, generation config, tokenizer files, `*.safetensors` and the shard index at the
    /// repository's top level; a repository without safetensors: its one `.gguf` file.
    #[default]
    Default,
    /// The files matching any of these globs (`*` also crosses `/`); each must match one.
    Include(Vec<String>),
}

/// Top-level files fetched besides the weights.
const DEFAULT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// The files of `listing` that `selection` asks for, in listing order, checked to be safe
/// names with a checksum and size.
pub(crate) fn select(
    repo: &str,
    listing: &Listing,
    selection: &Selection,
) -> Result<Vec<Wanted>, HubError> {
    let names = || {
        listing
            .siblings
            .iter()
            .map(|s| s.rfilename.clone())
            .collect::<Vec<_>>()
    };
    let chosen: Vec<&Sibling> = match selection {
        Selection::Default => {
            let top = || {
                listing
                    .siblings
                    .iter()
                    .filter(|s| !s.rfilename.contains('/'))
            };
            let weights = |s: &Sibling| s.rfilename.ends_with(".safetensors");
            if top().any(weights) {
                let wanted = |s: &&Sibling| weights(s) || DEFAULT_FILES.contains(&&*s.rfilename);
                top().filter(wanted).collect()
            } else {
                let ggufs: Vec<&Sibling> = (listing.siblings.iter())
                    .filter(|s| s.rfilename.ends_with(".gguf"))
                    .collect();
                match ggufs.len() {
                    1 => ggufs,
                    0 => {
                        return Err(HubError::NoWeights {
                            repo: repo.to_string(),
                            files: names(),
                        })
                    }
                    _ => {
                        return Err(HubError::ManyGgufs {
                            repo: repo.to_string(),
                            ggufs: ggufs.iter().map(|s| s.rfilename.clone()).collect(),
                        })
                    }
                }
            }
        }
        Selection::Include(patterns) => {
            let options = glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: false,
                require_literal_leading_dot: false,
            };
            let mut compiled = Vec::with_capacity(patterns.len());
            for p in patterns {
                let pat = glob::Pattern::new(p).map_err(|e| HubError::BadPattern {
                    pattern: p.clone(),
                    detail: e.msg.to_string(),
                })?;
                if !listing
                    .siblings
                    .iter()
                    .any(|s| pat.matches_with(&s.rfilename, options))
                {
                    return Err(HubError::NoMatch {
                        pattern: p.clone(),
                        repo: repo.to_string(),
                        files: names(),
                    });
                }
                compiled.push(pat);
            }
            (listing.siblings.iter())
                .filter(|s| {
                    compiled
                        .iter()
                        .any(|p| p.matches_with(&s.rfilename, options))
                })
                .collect()
        }
    };
    chosen.into_iter().map(wanted).collect()
}

fn wanted(s: &Sibling) -> Result<Wanted, HubError> {
    let name = &s.rfilename;
    if !safe_name(name) {
        return Err(HubError::BadResponse(format!(
            "unsupported file name {name:?} in the listing"
        )));
    }
    let missing = || HubError::BadResponse(format!("no checksum or size listed for {name}"));
    let (checksum, size) = match (&s.lfs, &s.blob_id, s.size) {
        (Some(lfs), _, _) => (Checksum::Sha256(lfs.sha256.clone()), lfs.size),
        (None, Some(id), Some(size)) => (Checksum::GitSha1(id.clone()), size),
        _ => return Err(missing()),
    };
    let hex_len = match checksum {
        Checksum::Sha256(_) => 64,
        Checksum::GitSha1(_) => 40,
    };
    if !is_hex(checksum.digest(), hex_len) {
        return Err(HubError::BadResponse(format!(
            "{name}: malformed checksum {:?}",
            checksum.digest()
        )));
    }
    Ok(Wanted {
        name: name.clone(),
        size,
        checksum,
    })
}

/// A relative path of plain components, safe to join under a snapshot and to put in a URL.
fn safe_name(name: &str) -> bool {
    name.len() <= 1024
        && !name.starts_with('/')
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+=@,~".contains(&b))
        })
}

/// `s` is `len` lowercase hex digits.
pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Listing {
        let siblings = names
            .iter()
            .map(|n| {
                let lfs = (n.ends_with(".safetensors") || n.ends_with(".gguf")).then(|| Lfs {
                    sha256: "a".repeat(64),
                    size: 10,
                });
                Sibling {
                    rfilename: n.to_string(),
                    blob_id: Some("b".repeat(40)),
                    size: Some(3),
                    lfs,
                }
            })
            .collect();
        Listing {
            sha: "c".repeat(40),
            siblings,
        }
    }

    fn chosen(l: &Listing, s: &Selection) -> Result<Vec<String>, HubError> {
        Ok(select("o/n", l, s)?.into_iter().map(|w| w.name).collect())
    }

    #[test]
    fn default_takes_config_tokenizer_and_safetensors_only() {
        let l = listing(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "configuration_deepseek.py",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "inference/config_671B.json",
            "inference/model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]);
        let got = chosen(&l, &Selection::Default).unwrap();
        assert_eq!(
            got,
            [
                "config.json",
                "generation_config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
                "tokenizer_config.json",
            ]
        );
        let w = select("o/n", &l, &Selection::Default).unwrap();
        assert_eq!(
            (w[0].size, &w[0].checksum),
            (3, &Checksum::GitSha1("b".repeat(40)))
        );
        assert_eq!(
            (w[2].size, &w[2].checksum),
            (10, &Checksum::Sha256("a".repeat(64)))
        );
    }

    #[test]
    fn ggufs_one_by_default_else_by_pattern() {
        let one = listing(&["README.md", "m-Q4_0.gguf"]);
        assert_eq!(chosen(&one, &Selection::Default).unwrap(), ["m-Q4_0.gguf"]);
        let many = listing(&[
            "README.md",
            "m-Q4_0.gguf",
            "m-Q8_0.gguf",
            "big/m-BF16-00001-of-00002.gguf",
        ]);
        let e = chosen(&many, &Selection::Default).unwrap_err();
        assert!(
            matches!(e, HubError::ManyGgufs { ref ggufs, .. } if ggufs.len() == 3),
            "{e}"
        );
        let pick = |p: &[&str]| {
            chosen(
                &many,
                &Selection::Include(p.iter().map(|s| s.to_string()).collect()),
            )
        };
        assert_eq!(pick(&["*Q8_0.gguf"]).unwrap(), ["m-Q8_0.gguf"]);
        assert_eq!(
            pick(&["*BF16*"]).unwrap(),
            ["big/m-BF16-00001-of-00002.gguf"]
        );
        assert_eq!(
            pick(&["README.md", "*Q4_0*"]).unwrap(),
            ["README.md", "m-Q4_0.gguf"]
        );
        let e = pick(&["*Q4_0*", "*Q5_K.gguf"]).unwrap_err();
        assert!(
            matches!(e, HubError::NoMatch { ref pattern, .. } if pattern == "*Q5_K.gguf"),
            "{e}"
        );
        assert!(e.to_string().contains("m-Q8_0.gguf"), "{e}");
        assert!(matches!(
            pick(&["[x"]).unwrap_err(),
            HubError::BadPattern { .. }
        ));
        let none = listing(&["README.md", "pytorch_model.bin"]);
        assert!(matches!(
            chosen(&none, &Selection::Default),
            Err(HubError::NoWeights { .. })
        ));
    }

    #[test]
    fn unsafe_names_and_checksums_are_refused() {
        for name in [
            "../x.safetensors",
            "a/../../x.safetensors",
            "/abs.safetensors",
            "a b.safetensors",
            "a%2F.safetensors",
        ] {
            let l = listing(&[name]);
            let e = chosen(&l, &Selection::Include(vec!["*".into()])).unwrap_err();
            assert!(matches!(e, HubError::BadResponse(_)), "{name}: {e}");
        }
        let mut l = listing(&["m.safetensors"]);
        l.siblings[0].lfs = Some(Lfs {
            sha256: "../../etc".into(),
            size: 1,
        });
        assert!(matches!(
            chosen(&l, &Selection::Default),
            Err(HubError::BadResponse(_))
        ));
        l.siblings[0].lfs = None;
        l.siblings[0].blob_id = None;
        assert!(matches!(
            chosen(&l, &Selection::Default),
            Err(HubError::BadResponse(_))
        ));
    }
}
