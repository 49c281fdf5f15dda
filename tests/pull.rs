//! `moela pull` against a hub on loopback (`hub_server`): the files land in the standard HF
//! cache layout, `--model ORG/NAME` then runs from it offline, and every failure (checksum,
//! interrupted transfer, token, unreachable hub, missing repo or revision, unmatched pattern)
//! is one line and a non-zero exit. No network beyond 127.0.0.1.

mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hub_server::{sha256, Behaviour, FakeRepo, HubFile, HubServer};

const REPO: &str = "test-org/tiny-v3";
const GGUF_REPO: &str = "test-org/tiny-GGUF";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn file(name: &str, bytes: Vec<u8>, lfs: bool) -> HubFile {
    HubFile {
        name: name.into(),
        bytes,
        lfs,
    }
}

/// The V3 fixture's checkpoint files as a hub repository, with a README and a Python file a
/// pull leaves alone.
fn v3_repo() -> FakeRepo {
    let dir = fixture("models/v3");
    let mut files = vec![
        file(
            ".gitattributes",
            b"*.safetensors filter=lfs\n".to_vec(),
            false,
        ),
        file("README.md", b"# tiny-v3\n".to_vec(), false),
        file(
            "configuration_deepseek.py",
            b"# config class\n".to_vec(),
            false,
        ),
    ];
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        files.push(file(name, bytes, name.ends_with(".safetensors")));
    }
    FakeRepo::new(REPO, files)
}

/// Two GGUF files (the V3 and V2 fixtures) and a README.
fn gguf_repo() -> FakeRepo {
    let read = |f: &str| std::fs::read(fixture(&format!("gguf/{f}"))).unwrap();
    FakeRepo::new(
        GGUF_REPO,
        vec![
            file("README.md", b"# GGUF\n".to_vec(), false),
            file("tiny-Q4_0.gguf", read("deepseek2_v2.gguf"), true),
            file("tiny-Q8_0.gguf", read("deepseek2_v3.gguf"), true),
        ],
    )
}

/// Runs `moela` with its own HF cache and hub endpoint, and no token or model from the
/// environment.
fn moela(hf_home: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moela"));
    cmd.args(args)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("MOELA_MODEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed run: non-zero exit, no panic, one line on stderr containing every needle.
fn assert_fails(o: &Output, needles: &[&str]) -> String {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in {err}");
    }
    err
}

fn assert_ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

fn repo_dir(hf_home: &Path, id: &str) -> PathBuf {
    hf_home
        .join("hub")
        .join(format!("models--{}", id.replace('/', "--")))
}

/// Greedy token ids of `generate --raw` on `model`.
fn greedy(hf_home: &Path, model: &str, env: &[(&str, &str)]) -> Vec<u64> {
    let mut args = vec![
        "generate",
        "--prompt",
        "The sea",
        "--raw",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--json",
    ];
    if !model.is_empty() {
        args.extend(["--model", model]);
    }
    let o = moela(hf_home, "http://127.0.0.1:9", &args, env);
    let out = assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let ids: Vec<u64> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert!(!ids.is_empty());
    ids
}

#[test]
fn pull_fills_the_hf_cache_and_model_runs_from_it_offline() {
    let home = tempfile::tempdir().unwrap();
    let hub = HubServer::start(vec![v3_repo()], Behaviour::default());
    let repo = v3_repo();
    let out = assert_ok(&moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]));
    assert!(out.contains("5 files, 5 downloaded"), "{out}");

    let dir = repo_dir(home.path(), REPO);
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        repo.commit
    );
    let snapshot = dir.join("snapshots").join(&repo.commit);
    assert!(out.contains(&snapshot.display().to_string()), "{out}");
    let mut names: Vec<String> = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    for f in repo.files.iter().filter(|f| names.contains(&f.name)) {
        let link = snapshot.join(&f.name);
        // Each snapshot entry is a relative link to its blob, named by its etag.
        let target = std::fs::read_link(&link).unwrap();
        assert!(target.starts_with("../../blobs"), "{}", target.display());
        let blob = dir.join("blobs").join(target.file_name().unwrap());
        assert_eq!(std::fs::read(&blob).unwrap(), f.bytes, "{}", f.name);
        if f.lfs {
            assert_eq!(
                target.file_name().unwrap().to_str().unwrap(),
                sha256(&f.bytes)
            );
        }
    }
    let blobs: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 5, "{blobs:?}");
    assert!(
        blobs.iter().all(|b| !b.contains('.')),
        "leftovers: {blobs:?}"
    );

    // Pulling again lists the revision and downloads nothing.
    hub.clear_log();
    let out = assert_ok(&moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]));
    assert!(
        out.contains("0 downloaded") && out.contains("5 already in the cache"),
        "{out}"
    );
    let seen = hub.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .path
            .starts_with(&format!("/api/models/{REPO}/revision/main")),
        "{seen:?}"
    );
    assert!(seen[0].path.contains("blobs=true"));

    // The hub is gone: `--model ORG/NAME` and $MOELA_MODEL read the cache, and generate the
    // same tokens as the fixture directory.
    hub.stop();
    let expected = greedy(home.path(), fixture("models/v3").to_str().unwrap(), &[]);
    assert_eq!(greedy(home.path(), REPO, &[]), expected);
    assert_eq!(greedy(home.path(), "", &[("MOELA_MODEL", REPO)]), expected);
    let by_commit = format!("{REPO}@{}", repo.commit);
    assert_eq!(greedy(home.path(), &by_commit, &[]), expected);

    let o = moela(
        home.path(),
        "http://127.0.0.1:9",
        &["inspect", "--model", "test-org/not-pulled"],
        &[],
    );
    assert_fails(
        &o,
        &[
            "test-org/not-pulled",
            "not in the Hugging Face cache",
            "run `moela pull test-org/not-pulled`",
        ],
    );
}

#[test]
fn a_corrupted_file_is_refused_and_removed() {
    for (name, algo) in [
        ("model.safetensors", "sha256"),
        ("tokenizer.json", "git blob sha1"),
    ] {
        let home = tempfile::tempdir().unwrap();
        let hub = HubServer::start(
            vec![v3_repo()],
            Behaviour {
                corrupt: Some(name.into()),
                ..Behaviour::default()
            },
        );
        let o = moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]);
        assert_fails(&o, &[name, "checksum mismatch", algo, "removed"]);
        let snapshot = repo_dir(home.path(), REPO)
            .join("snapshots")
            .join(v3_repo().commit);
        assert!(
            std::fs::symlink_metadata(snapshot.join(name)).is_err(),
            "{name} left in the snapshot"
        );
        let blobs = std::fs::read_dir(repo_dir(home.path(), REPO).join("blobs")).unwrap();
        let good: Vec<Vec<u8>> = v3_repo().files.into_iter().map(|f| f.bytes).collect();
        for b in blobs {
            let bytes = std::fs::read(b.unwrap().path()).unwrap();
            assert!(good.contains(&bytes), "a corrupted blob was kept");
        }
    }
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let home = tempfile::tempdir().unwrap();
    let cut = 100_000;
    let hub = HubServer::start(
        vec![v3_repo()],
        Behaviour {
            drop_once: Some(("model.safetensors".into(), cut)),
            ..Behaviour::default()
        },
    );
    let o = moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]);
    assert_fails(&o, &["model.safetensors", "interrupted", "again to resume"]);
    let digest = sha256(&std::fs::read(fixture("models/v3/model.safetensors")).unwrap());
    let part = repo_dir(home.path(), REPO)
        .join("blobs")
        .join(format!("{digest}.part"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);

    hub.clear_log();
    let out = assert_ok(&moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]));
    // config.json and generation_config.json came before the cut.
    assert!(
        out.contains("3 downloaded") && out.contains("2 already"),
        "{out}"
    );
    let ranges: Vec<String> = hub
        .requests()
        .iter()
        .filter(|r| r.path == format!("/cdn/{digest}"))
        .filter_map(|r| r.header("range").map(String::from))
        .collect();
    assert!(ranges.contains(&format!("bytes={cut}-")), "{ranges:?}");
    let snapshot = repo_dir(home.path(), REPO)
        .join("snapshots")
        .join(v3_repo().commit);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(fixture("models/v3/model.safetensors")).unwrap()
    );
    assert!(!part.exists());
}

#[test]
fn a_gated_repo_needs_hf_token() {
    let token = "hf_test_secret";
    let hub = HubServer::start(
        vec![v3_repo()],
        Behaviour {
            token: Some(token.into()),
            ..Behaviour::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let o = moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]);
    assert_fails(&o, &[REPO, "set HF_TOKEN"]);
    assert!(hub
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));

    let o = moela(
        home.path(),
        &hub.endpoint(),
        &["pull", REPO],
        &[("HF_TOKEN", "hf_wrong")],
    );
    assert_fails(&o, &[REPO, "access denied for this token"]);

    hub.clear_log();
    assert_ok(&moela(
        home.path(),
        &hub.endpoint(),
        &["pull", REPO],
        &[("HF_TOKEN", token)],
    ));
    let seen = hub.requests();
    let hub_requests: Vec<_> = seen
        .iter()
        .filter(|r| !r.path.starts_with("/cdn/"))
        .collect();
    assert!(hub_requests.len() >= 6, "{seen:?}");
    for r in hub_requests {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{}",
            r.path
        );
    }

    // The token file under $HF_HOME, as `huggingface-cli login` writes it.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), format!("{token}\n")).unwrap();
    assert_ok(&moela(home.path(), &hub.endpoint(), &["pull", REPO], &[]));
}

#[test]
fn hub_errors_are_one_line() {
    let home = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let offline = format!("http://127.0.0.1:{closed}");
    let o = moela(home.path(), &offline, &["pull", REPO], &[]);
    assert_fails(&o, &[&format!("cannot reach the hub at {offline}")]);

    let hub = HubServer::start(vec![v3_repo()], Behaviour::default());
    let o = moela(
        home.path(),
        &hub.endpoint(),
        &["pull", "test-org/missing"],
        &[],
    );
    assert_fails(&o, &["model test-org/missing not found", "HF_TOKEN"]);
    let o = moela(
        home.path(),
        &hub.endpoint(),
        &["pull", &format!("{REPO}@v9")],
        &[],
    );
    assert_fails(&o, &[REPO, "no revision \"v9\""]);
    let o = moela(home.path(), &hub.endpoint(), &["pull", "not a repo"], &[]);
    assert_fails(&o, &["invalid model id"]);
    let o = moela(home.path(), "ftp://x", &["pull", REPO], &[]);
    assert_fails(&o, &["HF_ENDPOINT is not an http(s) URL"]);
    assert!(!repo_dir(home.path(), REPO).join("snapshots").exists());
}

#[test]
fn include_picks_one_gguf() {
    let home = tempfile::tempdir().unwrap();
    let hub = HubServer::start(vec![gguf_repo()], Behaviour::default());
    let o = moela(home.path(), &hub.endpoint(), &["pull", GGUF_REPO], &[]);
    assert_fails(
        &o,
        &[
            "2 GGUF files",
            "--include",
            "tiny-Q4_0.gguf",
            "tiny-Q8_0.gguf",
        ],
    );
    let o = moela(
        home.path(),
        &hub.endpoint(),
        &["pull", GGUF_REPO, "--include", "*Q5_K.gguf"],
        &[],
    );
    assert_fails(
        &o,
        &[
            "\"*Q5_K.gguf\" matches no file",
            "README.md, tiny-Q4_0.gguf, tiny-Q8_0.gguf",
        ],
    );

    let out = assert_ok(&moela(
        home.path(),
        &hub.endpoint(),
        &["pull", GGUF_REPO, "--include", "*Q8_0.gguf"],
        &[],
    ));
    assert!(out.contains("1 files, 1 downloaded"), "{out}");
    let snapshot = repo_dir(home.path(), GGUF_REPO)
        .join("snapshots")
        .join(gguf_repo().commit);
    let names: Vec<_> = std::fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tiny-Q8_0.gguf"]);
    hub.stop();
    let expected = greedy(
        home.path(),
        fixture("gguf/deepseek2_v3.gguf").to_str().unwrap(),
        &[],
    );
    assert_eq!(greedy(home.path(), GGUF_REPO, &[]), expected);
}
