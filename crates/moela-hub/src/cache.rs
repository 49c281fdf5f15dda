//! The standard HF cache layout: finding a pulled model, and checking a cached file's content.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha1::Digest;

use crate::select::{is_hex, Checksum, Wanted};
use crate::{HubError, RepoRef};

/// A model found in the cache.
#[derive(Clone, Debug)]
pub struct CachedModel {
    /// The snapshot directory, or the one `.gguf` file in it.
    pub path: PathBuf,
    /// The commit the revision pointed at when it was pulled.
    pub commit: String,
}

/// `cache/models--ORG--NAME`.
pub(crate) fn repo_dir(cache: &Path, r: &RepoRef) -> PathBuf {
    cache.join(r.folder())
}

/// Finds `r` in the hub cache `cache`: its revision's snapshot directory when it holds
/// `config.json`, else the one `.gguf` file in it.
pub fn resolve_cached(cache: &Path, r: &RepoRef) -> Result<CachedModel, HubError> {
    let dir = repo_dir(cache, r);
    let not_cached = || HubError::NotCached {
        repo: r.to_string(),
        cache: cache.to_path_buf(),
    };
    let commit = match std::fs::read_to_string(dir.join("refs").join(&r.revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_hex(&r.revision, 40) => r.revision.clone(),
        Err(_) => return Err(not_cached()),
    };
    if !is_hex(&commit, 40) {
        return Err(not_cached());
    }
    let snapshot = dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(not_cached());
    }
    if snapshot.join("config.json").is_file() {
        return Ok(CachedModel {
            path: snapshot,
            commit,
        });
    }
    let mut ggufs = Vec::new();
    find_ggufs(&snapshot, &snapshot, &mut ggufs).map_err(|e| HubError::io(&snapshot, e))?;
    ggufs.sort();
    match ggufs.len() {
        0 => Err(HubError::NoModelInSnapshot(snapshot)),
        1 => Ok(CachedModel {
            path: snapshot.join(&ggufs[0]),
            commit,
        }),
        _ => Err(HubError::ManyCachedGgufs {
            snapshot,
            files: ggufs,
        }),
    }
}

/// The `.gguf` files under `dir` (their paths relative to `root`), at most 8 levels down.
fn find_ggufs(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    if dir.components().count() > root.components().count() + 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file_type = std::fs::symlink_metadata(&path)?.file_type();
        if file_type.is_dir() {
            find_ggufs(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "gguf") && path.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// `path` holds what `want` says: its size, then its checksum. The error names the file.
pub(crate) fn verify(path: &Path, want: &Wanted) -> Result<(), HubError> {
    let size = std::fs::metadata(path)
        .map_err(|e| HubError::io(path, e))?
        .len();
    if size != want.size {
        return Err(HubError::SizeMismatch {
            file: want.name.clone(),
            expected: want.size,
            actual: size,
        });
    }
    let actual = digest_file(path, &want.checksum, size)?;
    if actual != want.checksum.digest() {
        return Err(HubError::ChecksumMismatch {
            file: want.name.clone(),
            algo: match want.checksum {
                Checksum::Sha256(_) => "sha256",
                Checksum::GitSha1(_) => "git blob sha1",
            },
            expected: want.checksum.digest().to_string(),
            actual,
        });
    }
    Ok(())
}

/// The file's digest of `kind`'s algorithm, lowercase hex.
fn digest_file(path: &Path, kind: &Checksum, size: u64) -> Result<String, HubError> {
    let io = |e| HubError::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |update: &mut dyn FnMut(&[u8])| -> Result<(), HubError> {
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            update(&buf[..n]);
        }
    };
    let bytes = match kind {
        Checksum::Sha256(_) => {
            let mut h = sha2::Sha256::new();
            feed(&mut |b| h.update(b))?;
            h.finalize().to_vec()
        }
        Checksum::GitSha1(_) => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {size}\0").as_bytes());
            feed(&mut |b| h.update(b))?;
            h.finalize().to_vec()
        }
    };
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, size: u64, checksum: Checksum) -> Wanted {
        Wanted {
            name: name.into(),
            size,
            checksum,
        }
    }

    /// The git blob id agrees with git's own (`git hash-object`), and a changed byte fails.
    #[test]
    fn checksums_agree_with_git_and_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        let content = b"{\"a\": 1}\n\xff binary tail";
        std::fs::write(&path, content).unwrap();
        let tool = |cmd: &str, args: &[&str]| {
            let o = std::process::Command::new(cmd)
                .args(args)
                .arg(&path)
                .output()
                .unwrap();
            assert!(o.status.success());
            let s = String::from_utf8(o.stdout).unwrap();
            s.split_whitespace().next().unwrap().to_string()
        };
        let git = tool("git", &["hash-object"]);
        let sha = tool("sha256sum", &[]);
        let n = content.len() as u64;
        verify(&path, &wanted("f.json", n, Checksum::GitSha1(git.clone()))).unwrap();
        verify(&path, &wanted("f.json", n, Checksum::Sha256(sha.clone()))).unwrap();
        let e = verify(
            &path,
            &wanted("f.json", n + 1, Checksum::Sha256(sha.clone())),
        )
        .unwrap_err();
        assert!(matches!(e, HubError::SizeMismatch { .. }), "{e}");
        let mut changed = content.to_vec();
        changed[3] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        for c in [Checksum::GitSha1(git), Checksum::Sha256(sha)] {
            let e = verify(&path, &wanted("f.json", n, c)).unwrap_err();
            assert!(
                matches!(e, HubError::ChecksumMismatch { ref file, .. } if file == "f.json"),
                "{e}"
            );
        }
    }

    #[test]
    fn resolves_refs_commits_and_single_ggufs() {
        let cache = tempfile::tempdir().unwrap();
        let c = cache.path();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let r = RepoRef::parse("org/model").unwrap();
        let e = resolve_cached(c, &r).unwrap_err();
        assert!(e.to_string().contains("run `moela pull org/model`"), "{e}");
        let repo = repo_dir(c, &r);
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        assert!(matches!(
            resolve_cached(c, &r),
            Err(HubError::NoModelInSnapshot(_))
        ));
        std::fs::create_dir_all(snap.join("q")).unwrap();
        std::fs::write(snap.join("q/m-Q4_0.gguf"), b"x").unwrap();
        assert_eq!(
            resolve_cached(c, &r).unwrap().path,
            snap.join("q/m-Q4_0.gguf")
        );
        std::fs::write(snap.join("m-Q8_0.gguf"), b"x").unwrap();
        assert!(matches!(
            resolve_cached(c, &r),
            Err(HubError::ManyCachedGgufs { .. })
        ));
        std::fs::write(snap.join("config.json"), b"{}").unwrap();
        let found = resolve_cached(c, &r).unwrap();
        assert_eq!((found.path, found.commit.as_str()), (snap.clone(), commit));
        let by_commit = RepoRef::parse(&format!("org/model@{commit}")).unwrap();
        assert_eq!(resolve_cached(c, &by_commit).unwrap().path, snap);
        let other = RepoRef::parse("org/model@v2").unwrap();
        assert!(matches!(
            resolve_cached(c, &other),
            Err(HubError::NotCached { .. })
        ));
    }
}
