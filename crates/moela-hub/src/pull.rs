//! `moela pull`: list a revision's files with their checksums, fetch the selected ones through
//! `hf-hub` (resumed from a `.part` file), verify each, and point the revision's ref at the
//! commit.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::cache::{repo_dir, verify};
use crate::select::{is_hex, select, Listing};
use crate::{HubError, HubSettings, RepoRef, Selection};

/// The listing of a repository with tens of thousands of files fits in this.
const MAX_LISTING_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    pub selection: Selection,
    /// Progress bars on stderr.
    pub progress: bool,
}

/// What a pull left in the cache.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The commit the revision points at.
    pub commit: String,
    /// `.../snapshots/<commit>`.
    pub snapshot: PathBuf,
    pub files: Vec<PulledFile>,
}

#[derive(Clone, Debug)]
pub struct PulledFile {
    pub name: String,
    pub size: u64,
    /// False when the cache already held it.
    pub downloaded: bool,
}

/// What the hub is asked about, for naming a failure.
struct Context<'a> {
    settings: &'a HubSettings,
    repo: &'a RepoRef,
    /// The file being fetched, when one is.
    file: Option<&'a str>,
}

/// Fetches `r`'s selected files into the cache `settings.cache` and verifies them.
pub fn pull(settings: &HubSettings, r: &RepoRef, opts: &PullOptions) -> Result<Pulled, HubError> {
    let mut ctx = Context {
        settings,
        repo: r,
        file: None,
    };
    let api = ApiBuilder::from_cache(Cache::new(settings.cache.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(false)
        .with_user_agent("moela", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| ctx.api_error(e))?;
    let hub_repo = Repo::with_revision(r.id.clone(), RepoType::Model, r.revision.clone());
    let api_repo = api.repo(hub_repo.clone());
    let listing = list(&api_repo, &ctx)?;
    if !is_hex(&listing.sha, 40) {
        return Err(HubError::BadResponse(format!(
            "malformed commit {:?}",
            listing.sha
        )));
    }
    let wanted = select(&r.id, &listing, &opts.selection)?;
    let repo_dir = repo_dir(&settings.cache, r);
    let snapshot = repo_dir.join("snapshots").join(&listing.sha);
    let mut files = Vec::with_capacity(wanted.len());
    for w in &wanted {
        ctx.file = Some(&w.name);
        let dest = snapshot.join(&w.name);
        let blob = repo_dir.join("blobs").join(w.checksum.digest());
        let cached =
            has_size(&dest, w.size) || (has_size(&blob, w.size) && link(&blob, &dest, &w.name)?);
        let downloaded = if cached {
            false
        } else {
            prepare(&dest, &blob, w.size)?;
            let got = api_repo.download_with_progress(&w.name, Bar::new(opts.progress));
            // hf-hub leaves its lock file beside the blob (a concurrent pull that still
            // holds it and the checksums guard what a race could do).
            if !matches!(got, Err(ApiError::LockAcquisition(_))) {
                let _ = std::fs::remove_file(blob.with_extension("lock"));
            }
            let got = got.map_err(|e| ctx.api_error(e))?;
            if got != dest {
                return Err(HubError::RevisionMoved {
                    repo: r.id.clone(),
                    revision: r.revision.clone(),
                });
            }
            if let Err(e) = verify(&dest, w) {
                if let Ok(target) = std::fs::canonicalize(&dest) {
                    let _ = std::fs::remove_file(target);
                }
                let _ = std::fs::remove_file(&dest);
                return Err(e);
            }
            true
        };
        files.push(PulledFile {
            name: w.name.clone(),
            size: w.size,
            downloaded,
        });
    }
    Cache::new(settings.cache.clone())
        .repo(hub_repo)
        .create_ref(&listing.sha)
        .map_err(|e| HubError::io(repo_dir.join("refs"), e))?;
    Ok(Pulled {
        commit: listing.sha,
        snapshot,
        files,
    })
}

/// `GET /api/models/{repo}/revision/{rev}?blobs=true`: the commit and every file with its
/// size and checksum.
fn list(repo: &ApiRepo, ctx: &Context) -> Result<Listing, HubError> {
    let response = repo
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| ctx.request_error(e))?;
    let body = response.into_reader().take(MAX_LISTING_BYTES);
    serde_json::from_reader(body)
        .map_err(|e| HubError::BadResponse(format!("the file listing of {}: {e}", ctx.repo)))
}

/// `path` (through its link) is a file of `size` bytes.
fn has_size(path: &Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Links `dest` to a blob the cache already holds (the same content in another revision);
/// false where links are not available.
fn link(blob: &Path, dest: &Path, name: &str) -> Result<bool, HubError> {
    #[cfg(unix)]
    {
        remove_stale(dest)?;
        let parent = dest.parent().unwrap_or(dest);
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        // From snapshots/<commit>/<name> up to the repository folder, then into blobs/.
        let mut target = PathBuf::from("../..");
        for _ in 1..name.split('/').count() {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, dest).map_err(|e| HubError::io(dest, e))?;
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = (blob, dest, name);
        Ok(false)
    }
}

/// Clears what would stop hf-hub: a snapshot entry that is dangling or of the wrong size, and a
/// `.part` file already as long as the file (a Range request past the end would be refused).
fn prepare(dest: &Path, blob: &Path, size: u64) -> Result<(), HubError> {
    remove_stale(dest)?;
    let part = blob.with_extension("part");
    if std::fs::metadata(&part).is_ok_and(|m| m.len() >= size) {
        std::fs::remove_file(&part).map_err(|e| HubError::io(&part, e))?;
    }
    Ok(())
}

fn remove_stale(dest: &Path) -> Result<(), HubError> {
    if std::fs::symlink_metadata(dest).is_ok() {
        std::fs::remove_file(dest).map_err(|e| HubError::io(dest, e))?;
    }
    Ok(())
}

impl Context<'_> {
    fn api_error(&self, e: ApiError) -> HubError {
        let file = self.file.unwrap_or("the listing");
        match e {
            ApiError::RequestError(e) => self.request_error(*e),
            ApiError::IoError(e) => match e.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    HubError::DiskFull {
                        path: repo_dir(&self.settings.cache, self.repo),
                    }
                }
                std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::NotADirectory
                | std::io::ErrorKind::IsADirectory => HubError::Io {
                    path: repo_dir(&self.settings.cache, self.repo),
                    source: e,
                },
                _ => HubError::Interrupted {
                    file: file.to_string(),
                    detail: e.to_string(),
                },
            },
            ApiError::TooManyRetries(e) => self.api_error(*e),
            ApiError::LockAcquisition(p) => HubError::Locked(p),
            ApiError::MissingHeader(h) => {
                HubError::BadResponse(format!("{file}: no {h} header in the hub's answer"))
            }
            ApiError::InvalidHeader(h) => {
                HubError::BadResponse(format!("{file}: malformed {h} header"))
            }
            ApiError::ParseIntError(_) => {
                HubError::BadResponse(format!("{file}: malformed Content-Range header"))
            }
            ApiError::InvalidResume => HubError::Interrupted {
                file: file.to_string(),
                detail: "the partial download is longer than the file".into(),
            },
        }
    }

    fn request_error(&self, e: ureq::Error) -> HubError {
        let repo = self.repo.id.clone();
        let token_sent = self.settings.token.is_some();
        match e {
            ureq::Error::Transport(t) => HubError::Unreachable {
                endpoint: self.settings.endpoint.clone(),
                detail: t.to_string(),
            },
            ureq::Error::Status(status, response) => {
                let code = response.header("x-error-code").unwrap_or_default();
                match (code, status) {
                    ("RepoNotFound", _) => HubError::RepoNotFound {
                        repo,
                        endpoint: self.settings.endpoint.clone(),
                        token_sent,
                    },
                    ("RevisionNotFound", _) => HubError::RevisionNotFound {
                        repo,
                        revision: self.repo.revision.clone(),
                    },
                    ("GatedRepo", _) | (_, 401 | 403) => HubError::Unauthorized {
                        repo,
                        status,
                        token_sent,
                    },
                    (_, 404) => match self.file {
                        Some(file) => HubError::EntryNotFound {
                            repo,
                            file: file.to_string(),
                        },
                        None => HubError::RepoNotFound {
                            repo,
                            endpoint: self.settings.endpoint.clone(),
                            token_sent,
                        },
                    },
                    _ => HubError::Http {
                        url: response.get_url().to_string(),
                        status,
                    },
                }
            }
        }
    }
}

/// A progress bar on stderr for one file (none when `show` is false).
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(show: bool) -> Self {
        Bar(show.then(indicatif::ProgressBar::no_length))
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        if let Some(bar) = &self.0 {
            let style = indicatif::ProgressStyle::with_template(
                "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_length(size as u64);
            // Called again when a download resumes: the resumed bytes follow as one update.
            bar.set_position(0);
            bar.set_message(filename.to_string());
        }
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}
