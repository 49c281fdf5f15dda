//! A Hugging Face hub on loopback for `tests/pull.rs`: the API shape `moela pull` (hf-hub) uses,
//! served from memory over plain `std` sockets, one thread per connection, every request
//! recorded.
//!
//! - `GET /api/models/{org}/{name}/revision/{rev}?blobs=true`: `{id, sha, siblings: [{rfilename,
//!   blobId, size, lfs: {sha256, size, pointerSize}}]}`.
//! - `GET|HEAD /{org}/{name}/resolve/{rev}/{file}`: a regular file's bytes with `ETag` (its git
//!   blob id) and `X-Repo-Commit`; an LFS file: a 302 with `X-Linked-Etag`, `X-Linked-Size`,
//!   `X-Repo-Commit` to `/cdn/{sha256}` on another host (127.0.0.2), as the hub redirects to its
//!   CDN.
//! - `Range: bytes=a-[b]` answered 206 with `Content-Range`; errors carry `X-Error-Code`
//!   (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha1::Digest;

pub struct HubFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Stored in LFS (served through the CDN redirect, checked by sha256).
    pub lfs: bool,
}

pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<HubFile>,
}

impl FakeRepo {
    /// A repository whose commit id is derived from its name.
    pub fn new(id: &str, files: Vec<HubFile>) -> Self {
        FakeRepo {
            id: id.to_string(),
            commit: hex(&sha1::Sha1::digest(id.as_bytes())),
            files,
        }
    }
}

/// How the server misbehaves.
#[derive(Default)]
pub struct Behaviour {
    /// Every API and resolve request needs `Authorization: Bearer <token>` (401 without, 403
    /// with another).
    pub token: Option<String>,
    /// This file is served with one byte changed (the listing keeps the true checksums).
    pub corrupt: Option<String>,
    /// The first transfer of this file longer than the count stops after that many bytes and
    /// the connection is closed.
    pub drop_once: Option<(String, usize)>,
}

/// One request as received: the method, the path with its query, and the headers (names
/// lowercased).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let h = self.headers.iter().find(|(n, _)| n == name);
        h.map(|(_, v)| v.as_str())
    }
}

struct State {
    repos: Vec<FakeRepo>,
    behaviour: Behaviour,
    dropped: AtomicBool,
    log: Mutex<Vec<Seen>>,
    /// The hub's address and the CDN's (another host, as the hub's CDN is).
    hub: String,
    cdn: String,
}

pub struct HubServer {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    accept: Vec<(String, JoinHandle<()>)>,
}

impl HubServer {
    pub fn start(repos: Vec<FakeRepo>, behaviour: Behaviour) -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.2:0").unwrap();
        let state = Arc::new(State {
            repos,
            behaviour,
            dropped: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            hub: hub.local_addr().unwrap().to_string(),
            cdn: cdn.local_addr().unwrap().to_string(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept = [hub, cdn]
            .into_iter()
            .map(|listener| {
                let addr = listener.local_addr().unwrap().to_string();
                let (st, stp) = (state.clone(), stop.clone());
                let t = std::thread::spawn(move || {
                    for conn in listener.incoming() {
                        if stp.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = handle(&st, conn);
                        });
                    }
                });
                (addr, t)
            })
            .collect();
        HubServer {
            state,
            stop,
            accept,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.state.hub)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Closes the listening sockets.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (addr, t) in self.accept.drain(..) {
            let _ = TcpStream::connect(&addr);
            t.join().unwrap();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// git's blob id: sha1 of `blob <len>\0<content>`.
pub fn git_blob_id(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

/// The pointer file git stores for an LFS file.
fn lfs_pointer(bytes: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha256(bytes),
        bytes.len()
    )
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this many body bytes.
    cut: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut: None,
        }
    }

    fn error(status: u16, code: &str) -> Self {
        let mut r = Response::new(status);
        r.headers.push(("X-Error-Code".into(), code.into()));
        r.body = format!("{{\"error\": \"{code}\"}}").into_bytes();
        r
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn handle(state: &State, conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let seen = Seen {
        method,
        path,
        headers,
    };
    state.log.lock().unwrap().push(seen.clone());
    let mut response = route(state, &seen);
    if seen.method == "HEAD" {
        response.cut = Some(0);
    }
    write(conn, response)
}

fn write(mut conn: TcpStream, r: Response) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} X\r\n", r.status);
    for (n, v) in &r.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    conn.write_all(head.as_bytes())?;
    let n = r.cut.unwrap_or(r.body.len()).min(r.body.len());
    conn.write_all(&r.body[..n])?;
    conn.flush()?;
    conn.shutdown(std::net::Shutdown::Both)
}

fn route(state: &State, req: &Seen) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    if let Some(digest) = path.strip_prefix("/cdn/") {
        let file = state
            .repos
            .iter()
            .flat_map(|r| &r.files)
            .find(|f| f.lfs && sha256(&f.bytes) == digest);
        return match file {
            Some(f) => content(state, req, f),
            None => Response::error(404, "EntryNotFound"),
        };
    }
    if let Some(token) = &state.behaviour.token {
        match req.header("authorization") {
            Some(a) if a == format!("Bearer {token}") => {}
            Some(_) => return Response::error(403, "GatedRepo"),
            None => return Response::error(401, "GatedRepo"),
        }
    }
    let (api, rest) = match path.strip_prefix("/api/models/") {
        Some(rest) => (true, rest),
        None => (false, path.trim_start_matches('/')),
    };
    let mut parts = rest.splitn(3, '/');
    let id = format!(
        "{}/{}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    let rest = parts.next().unwrap_or_default();
    let Some(repo) = state.repos.iter().find(|r| r.id == id) else {
        return Response::error(404, "RepoNotFound");
    };
    let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (rev, file) = rest.split_once('/').unwrap_or((rest, ""));
    if rev != "main" && rev != repo.commit {
        return Response::error(404, "RevisionNotFound");
    }
    match (api, kind) {
        (true, "revision") => listing(repo),
        (false, "resolve") => match repo.files.iter().find(|f| f.name == file) {
            None => Response::error(404, "EntryNotFound"),
            Some(f) if f.lfs => Response::new(302)
                .header(
                    "Location",
                    format!("http://{}/cdn/{}", state.cdn, sha256(&f.bytes)),
                )
                .header("X-Repo-Commit", &repo.commit)
                .header("X-Linked-Etag", format!("\"{}\"", sha256(&f.bytes)))
                .header("X-Linked-Size", f.bytes.len().to_string())
                .header(
                    "ETag",
                    format!("\"{}\"", git_blob_id(lfs_pointer(&f.bytes).as_bytes())),
                ),
            Some(f) => content(state, req, f)
                .header("X-Repo-Commit", &repo.commit)
                .header("ETag", format!("\"{}\"", git_blob_id(&f.bytes))),
        },
        _ => Response::error(404, "EntryNotFound"),
    }
}

fn listing(repo: &FakeRepo) -> Response {
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|f| {
            let pointer = lfs_pointer(&f.bytes);
            match f.lfs {
                true => serde_json::json!({
                    "rfilename": f.name,
                    "blobId": git_blob_id(pointer.as_bytes()),
                    "size": f.bytes.len(),
                    "lfs": {"sha256": sha256(&f.bytes), "size": f.bytes.len(), "pointerSize": pointer.len()},
                }),
                false => serde_json::json!({
                    "rfilename": f.name,
                    "blobId": git_blob_id(&f.bytes),
                    "size": f.bytes.len(),
                }),
            }
        })
        .collect();
    let body = serde_json::json!({
        "id": repo.id,
        "sha": repo.commit,
        "private": false,
        "gated": false,
        "siblings": siblings,
    });
    let mut r = Response::new(200).header("Content-Type", "application/json");
    r.body = body.to_string().into_bytes();
    r
}

/// A file's bytes, whole or the requested range.
fn content(state: &State, req: &Seen, f: &HubFile) -> Response {
    let mut bytes = f.bytes.clone();
    if state.behaviour.corrupt.as_deref() == Some(f.name.as_str()) {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
    }
    let total = bytes.len();
    let range = req.header("range").and_then(|r| r.strip_prefix("bytes="));
    let mut r = match range {
        None => Response::new(200),
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
            let start: usize = a.parse().unwrap_or(0);
            let end = b.parse::<usize>().map_or(total, |e| (e + 1).min(total));
            if start >= total || start >= end {
                return Response::new(416).header("Content-Range", format!("bytes */{total}"));
            }
            bytes = bytes[start..end].to_vec();
            Response::new(206).header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", end - 1),
            )
        }
    };
    if let Some((name, n)) = &state.behaviour.drop_once {
        if *name == f.name && bytes.len() > *n && !state.dropped.swap(true, Ordering::SeqCst) {
            r.cut = Some(*n);
        }
    }
    r.body = bytes;
    r.header("Accept-Ranges", "bytes")
}
