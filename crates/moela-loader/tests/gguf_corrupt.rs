//! Corrupt GGUF files give errors that name the file and the key or tensor, never a panic.
//! `Raw` builds GGUF bytes field by field so that any field can be wrong.

mod common;

use std::path::PathBuf;

use common::fixtures;
use moela_loader::gguf::{GgufError, GgufFile};

#[derive(Default)]
struct Raw {
    version: Option<u32>,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Vec<u8>>,
    infos: Vec<Vec<u8>>,
    data: Vec<u8>,
}

fn rstr(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = rstr(key.as_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = rstr(name.as_bytes());
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

impl Raw {
    fn valid() -> Raw {
        Raw {
            kvs: vec![
                kv("general.architecture", 8, &rstr(b"deepseek2")),
                kv("a.u32", 4, &7u32.to_le_bytes()),
            ],
            infos: vec![info("w", &[4], 0, 0)],
            data: vec![0; 16],
            ..Raw::default()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.unwrap_or(3).to_le_bytes());
        b.extend_from_slice(
            &self
                .n_tensors
                .unwrap_or(self.infos.len() as u64)
                .to_le_bytes(),
        );
        b.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for k in &self.kvs {
            b.extend_from_slice(k);
        }
        for i in &self.infos {
            b.extend_from_slice(i);
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(&self.data);
        b
    }
}

fn open_bytes(bytes: &[u8]) -> (Result<GgufFile, GgufError>, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    (GgufFile::open(&path), path, dir)
}

/// Opening must fail with a message naming the file and containing every `needle`.
fn expect_error(bytes: &[u8], needles: &[&str]) {
    let (r, path, _dir) = open_bytes(bytes);
    let msg = match r {
        Ok(_) => panic!("opened a bad file; expected an error with {needles:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
}

#[test]
fn the_valid_raw_file_opens() {
    let (r, _, _d) = open_bytes(&Raw::valid().bytes());
    let f = r.unwrap();
    assert_eq!(f.get_u32("a.u32").unwrap(), 7);
    assert_eq!(f.tensor_bytes(f.tensor("w").unwrap()).unwrap().len(), 16);
}

#[test]
fn bad_headers() {
    expect_error(b"", &["not a GGUF file", "0 bytes"]);
    expect_error(b"GGU", &["not a GGUF file"]);
    expect_error(b"GGML\x03\0\0\0", &["not a GGUF file", "47, 47, 4d, 4c"]);
    let mut r = Raw::valid();
    r.version = Some(1);
    expect_error(&r.bytes(), &["version 1 is not supported"]);
    r.version = Some(3u32.swap_bytes());
    expect_error(&r.bytes(), &["big-endian"]);
    r.version = Some(4);
    expect_error(&r.bytes(), &["unsupported GGUF version 4"]);
    let mut r = Raw::valid();
    r.n_tensors = Some(u64::MAX);
    expect_error(
        &r.bytes(),
        &["tensor count 18446744073709551615", "cannot fit"],
    );
    let mut r = Raw::valid();
    r.n_kv = Some(1 << 40);
    expect_error(&r.bytes(), &["metadata entry count", "cannot fit"]);
    // More entries claimed than present (but a plausible count): runs off the end.
    let mut r = Raw::valid();
    r.n_kv = Some(4);
    expect_error(&r.bytes(), &["truncated"]);
}

#[test]
fn bad_metadata_names_the_key() {
    let case = |kvs: Vec<Vec<u8>>, needles: &[&str]| {
        let r = Raw {
            kvs,
            ..Raw::valid()
        };
        expect_error(&r.bytes(), needles);
    };
    // Absurd key length.
    let mut k = u64::MAX.to_le_bytes().to_vec();
    k.extend_from_slice(b"abc");
    case(
        vec![k],
        &["metadata entry 0", "metadata key length", "cannot fit"],
    );
    case(
        vec![kv("bad.type", 13, &[0; 8])],
        &["`bad.type`", "unknown value type 13"],
    );
    case(
        vec![kv("bad.str", 8, &(1u64 << 62).to_le_bytes())],
        &["`bad.str`", "string value length", "cannot fit"],
    );
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 61).to_le_bytes());
    case(
        vec![kv("bad.arr", 9, &arr)],
        &["`bad.arr`", "array length", "cannot fit"],
    );
    let mut arr = 77u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&1u64.to_le_bytes());
    case(
        vec![kv("bad.elem", 9, &arr)],
        &["`bad.elem`", "unknown array element type 77"],
    );
    // Arrays nested 9 deep.
    let mut nested = Vec::new();
    for _ in 0..9 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&[0; 64]);
    case(
        vec![kv("deep", 9, &nested)],
        &["`deep`", "nested more than 8"],
    );
    case(
        vec![kv("utf8", 8, &rstr(b"\xff\xfe"))],
        &["`utf8`", "not valid UTF-8"],
    );
    case(
        vec![kv("dup", 4, &[0; 4]), kv("dup", 4, &[0; 4])],
        &["`dup`", "appears twice"],
    );
    case(
        vec![kv("general.alignment", 4, &48u32.to_le_bytes())],
        &["`general.alignment`", "power of two", "48"],
    );
    case(
        vec![kv("general.alignment", 10, &32u64.to_le_bytes())],
        &["`general.alignment`", "u64"],
    );
    case(
        vec![kv("general.alignment", 4, &0u32.to_le_bytes())],
        &["`general.alignment`"],
    );
    // A value cut short by the end of the file.
    let r = Raw {
        kvs: vec![kv("short", 6, &[0; 2])],
        infos: vec![],
        data: vec![],
        ..Raw::valid()
    };
    let b = r.bytes();
    expect_error(
        &b[..24 + 8 + 5 + 4 + 2],
        &["`short`", "truncated", "f32 value"],
    );
}

#[test]
fn bad_tensor_infos_name_the_tensor() {
    let case = |infos: Vec<Vec<u8>>, data: usize, needles: &[&str]| {
        let r = Raw {
            infos,
            data: vec![0; data],
            ..Raw::valid()
        };
        expect_error(&r.bytes(), needles);
    };
    case(
        vec![info("w", &[5], 0, 0)],
        16,
        &["`w`", "runs past the end of the file"],
    );
    case(
        vec![info("w", &[4], 0, 32)],
        16,
        &["`w`", "runs past the end"],
    );
    case(
        vec![info("w", &[4], 0, u64::MAX - 31)],
        16,
        &["`w`", "runs past the end"],
    );
    case(
        vec![info("w", &[1], 0, 8)],
        64,
        &["`w`", "not a multiple of the alignment 32"],
    );
    case(
        vec![info("w", &[1, 1, 1, 1, 1], 0, 0)],
        16,
        &["`w`", "5 dimensions"],
    );
    case(
        vec![info("w", &[u64::MAX, 2], 0, 0)],
        16,
        &["`w`", "overflow the element count"],
    );
    case(
        vec![info("w", &[1 << 40, 1 << 40], 0, 0)],
        16,
        &["`w`", "overflow"],
    );
    case(
        vec![info("w", &[33], 2, 0)],
        64,
        &["`w`", "not a multiple of the Q4_0 block size 32"],
    );
    case(
        vec![info("w", &[4], 0, 0), info("w", &[4], 0, 32)],
        64,
        &["`w`", "appears twice"],
    );
    case(
        vec![info("w", &[4], 99, 1 << 20)],
        16,
        &["`w`", "past the end of the file"],
    );
    let mut long = (u64::MAX / 2).to_le_bytes().to_vec();
    long.extend_from_slice(b"w");
    case(
        vec![long],
        16,
        &["tensor info 0", "tensor name length", "cannot fit"],
    );
}

#[test]
fn unknown_tensor_types_fail_only_when_read() {
    let r = Raw {
        infos: vec![info("odd", &[4], 99, 0), info("w", &[4], 0, 32)],
        data: vec![1; 48],
        ..Raw::valid()
    };
    let (f, _p, _d) = open_bytes(&r.bytes());
    let f = f.unwrap();
    assert_eq!(f.tensor_bytes(f.tensor("w").unwrap()).unwrap(), &[1; 16]);
    let e = f
        .tensor_bytes(f.tensor("odd").unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`odd`") && e.contains("ggml type 99"), "{e}");
    let e = f.tensor_data("missing").unwrap_err().to_string();
    assert!(
        e.contains("`missing`") && e.contains("not in the file"),
        "{e}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/dir/model.gguf"));
    let l: moela_loader::LoadError = e.into();
    assert!(l.to_string().contains("/nonexistent/dir/model.gguf"));
}

/// Every truncation of a valid file before the end of its last tensor's data fails cleanly;
/// the padding after the last tensor is optional.
#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    for file in ["all_types.gguf", "deepseek2_v2.gguf"] {
        let full = std::fs::read(fixtures().join(file)).unwrap();
        let f = GgufFile::open(fixtures().join(file)).unwrap();
        let data_end = f
            .tensors()
            .iter()
            .map(|t| f.tensor_range(t).unwrap().end)
            .max()
            .unwrap();
        assert!(data_end <= full.len());
        std::fs::write(&path, &full).unwrap();
        GgufFile::open(&path).unwrap();
        // Truncate in place (rewriting the file each time is slow on some filesystems).
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(data_end as u64).unwrap();
        GgufFile::open(&path).unwrap();
        // all_types: every cut. The larger file: the first 512 bytes, then every 13th byte of
        // the header and every 61st of the tensor data.
        let header = f.data_offset() as usize;
        let wanted = |n: usize| {
            full.len() < 10_000
                || n < 512
                || (n <= header && n.is_multiple_of(13))
                || n.is_multiple_of(61)
        };
        for n in (0..data_end).rev().filter(|&n| wanted(n)) {
            file.set_len(n as u64).unwrap();
            assert!(GgufFile::open(&path).is_err(), "{file:?} cut at {n} opened");
        }
    }
}

/// Random byte changes in the header: any outcome but a panic (or a hang) is fine.
#[test]
fn random_header_corruption_never_panics() {
    let full = std::fs::read(fixtures().join("all_types.gguf")).unwrap();
    let header_len = GgufFile::open(fixtures().join("all_types.gguf"))
        .unwrap()
        .data_offset() as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.gguf");
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    std::fs::write(&path, &full).unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut poke = |at: usize, byte: u8| {
        use std::io::{Seek, SeekFrom, Write};
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        file.write_all(&[byte]).unwrap();
    };
    let mut opened = 0;
    for _ in 0..3000 {
        let mut changed = Vec::new();
        for _ in 0..1 + next() % 4 {
            let at = (next() % header_len as u64) as usize;
            let byte = match next() % 3 {
                0 => next() as u8,
                1 => 0xff,
                _ => 0,
            };
            changed.push(at);
            poke(at, byte);
        }
        if let Ok(f) = GgufFile::open(&path) {
            opened += 1;
            for t in f.tensors() {
                let _ = f.tensor_bytes(t);
            }
        }
        for at in changed {
            poke(at, full[at]);
        }
    }
    assert!(opened < 3000);
}
