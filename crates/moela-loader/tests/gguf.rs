//! GGUF reader and writer: the fixtures written by llama.cpp's `gguf` Python package
//! (tools/make_gguf_fixtures.py) read back exactly; our writer's output reads back and is
//! byte-identical to the Python writer's for the same content. Corrupt files: `gguf_corrupt.rs`.

mod common;

use std::path::PathBuf;

use common::fixtures;
use moela_loader::dtype::{bf16_from_le, f16_from_le, f32_from_le};
use moela_loader::gguf::{
    GgmlType, GgufArray, GgufError, GgufFile, GgufValue, GgufValueType, GgufWriter,
};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a 64, as the fixture script computes it.
fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Compares a value with its golden JSON; `f32` values compare as f32.
fn same_value(v: &GgufValue, want: &Value) -> bool {
    match (v, want) {
        (GgufValue::F32(x), Value::Number(n)) => n.as_f64().map(|w| w as f32) == Some(*x),
        // serde_json's default float parsing may be 1 ulp off.
        (GgufValue::F64(x), Value::Number(n)) => n
            .as_f64()
            .is_some_and(|w| (w - x).abs() <= x.abs() * 4.0 * f64::EPSILON),
        (GgufValue::Array(a), Value::Array(w)) => {
            a.items.len() == w.len() && a.items.iter().zip(w).all(|(x, y)| same_value(x, y))
        }
        _ => v.to_json() == *want,
    }
}

/// Checks one fixture file against its golden record.
fn check_fixture(name: &str) -> GgufFile {
    let g = &golden()[name];
    let path = fixtures().join(g["file"].as_str().unwrap());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), g["alignment"].as_u64().unwrap());
    assert_eq!(f.data_offset(), g["data_offset"].as_u64().unwrap());
    assert_eq!(f.mmap().len() as u64, g["size"].as_u64().unwrap());

    let want_meta = g["metadata"].as_array().unwrap();
    let keys: Vec<&str> = f.metadata_entries().map(|(k, _)| k).collect();
    let want_keys: Vec<&str> = want_meta
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, want_keys, "{name}: keys in file order");
    for m in want_meta {
        let key = m["key"].as_str().unwrap();
        let v = f.metadata(key).unwrap();
        assert_eq!(
            v.type_description(),
            m["type"].as_str().unwrap(),
            "{name}: {key}"
        );
        assert!(
            same_value(v, &m["value"]),
            "{name}: {key}: {v:?} vs {}",
            m["value"]
        );
    }

    let want_tensors = g["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), want_tensors.len());
    for (t, w) in f.tensors().iter().zip(want_tensors) {
        assert_eq!(t.name, w["name"].as_str().unwrap());
        let dims: Vec<u64> = serde_json::from_value(w["dims"].clone()).unwrap();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(
            u64::from(t.ggml_type.0),
            w["type"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.offset, w["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(
            t.n_bytes().unwrap(),
            w["n_bytes"].as_u64().unwrap(),
            "{}",
            t.name
        );
        let bytes = f.tensor_bytes(t).unwrap();
        assert_eq!(fnv1a64(bytes), w["fnv1a64"].as_str().unwrap(), "{}", t.name);
        if let Some(h) = w.get("hex") {
            assert_eq!(hex(bytes), h.as_str().unwrap(), "{}", t.name);
        }
        // Zero-copy view: the same bytes through the shared map.
        let range = f.tensor_range(t).unwrap();
        assert_eq!(&f.mmap()[range], bytes);
    }
    f
}

#[test]
fn python_fixtures_read_back_exactly() {
    let f = check_fixture("all_types");
    assert_eq!(f.architecture().unwrap(), "moela-test");
    check_fixture("deepseek2_v3");
    check_fixture("deepseek2_v2");
}

#[test]
fn typed_getters_convert_and_name_the_key() {
    let f = GgufFile::open(fixtures().join("all_types.gguf")).unwrap();
    assert_eq!(f.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u32("test.u8").unwrap(), 200);
    assert_eq!(f.get_u64("test.u64").unwrap(), (1u64 << 63) + 5);
    assert_eq!(f.get_i64("test.i8").unwrap(), -100);
    assert_eq!(f.get_f32("test.f32").unwrap(), 1.2345f32);
    assert_eq!(f.get_f64("test.f32_eps").unwrap(), 1e-6);
    assert_eq!(f.get_f64("test.f64").unwrap(), std::f64::consts::E);
    assert!(f.get_bool("test.bool_true").unwrap());
    assert_eq!(f.get_str("test.string").unwrap(), "héllo ✓ \"quoted\"\n");
    assert_eq!(
        f.get_str_array("test.arr.string").unwrap(),
        vec!["a", "", "ü ✓", "two words"]
    );
    assert_eq!(f.get_i64_array("test.arr.i8").unwrap(), vec![-128, 0, 127]);
    assert_eq!(f.opt_u32("no.such.key").unwrap(), None);

    let err = |e: GgufError| e.to_string();
    let m = err(f.get_u32("no.such.key").unwrap_err());
    assert!(m.contains("all_types.gguf") && m.contains("`no.such.key`") && m.contains("missing"));
    let m = err(f.get_u32("test.i8").unwrap_err());
    assert!(m.contains("`test.i8`") && m.contains("negative"), "{m}");
    let m = err(f.get_u32("test.u64").unwrap_err());
    assert!(
        m.contains("`test.u64`") && m.contains("does not fit in u32"),
        "{m}"
    );
    let m = err(f.get_str("test.u32").unwrap_err());
    assert!(
        m.contains("`test.u32`") && m.contains("expected a string, found u32"),
        "{m}"
    );
    let m = err(f.get_str_array("test.arr.nested_strings").unwrap_err());
    assert!(
        m.contains("element 0") && m.contains("array of string"),
        "{m}"
    );
}

/// ggml block sizes: our table against the gguf package's GGML_QUANT_SIZES.
#[test]
fn block_table_matches_gguf_py() {
    let g = golden();
    let sizes = g["quant_sizes"].as_object().unwrap();
    assert_eq!(sizes.len(), GgmlType::TABLE.len());
    for &(id, name, block, size) in GgmlType::TABLE {
        let want = &sizes[&id.to_string()];
        assert_eq!(
            (block, size),
            (want[0].as_u64().unwrap(), want[1].as_u64().unwrap()),
            "{name}"
        );
    }
}

/// The fixture's tensor bytes decode to the values gguf-py wrote / dequantized, with ggml's
/// block definitions (Q8_0: f16 d + 32 i8; Q4_0: f16 d + 16 bytes, low nibbles first half).
#[test]
fn fixture_tensor_values_decode_as_ggml_defines_them() {
    let g = golden();
    let f = GgufFile::open(fixtures().join("all_types.gguf")).unwrap();
    for w in g["all_types"]["tensors"].as_array().unwrap() {
        let (t, bytes) = f.tensor_data(w["name"].as_str().unwrap()).unwrap();
        let want: Vec<f64> = serde_json::from_value(w["values"].clone()).unwrap();
        let mut got = Vec::new();
        match t.ggml_type {
            GgmlType::F32 => f32_from_le(bytes, &mut got),
            GgmlType::F16 => f16_from_le(bytes, &mut got),
            GgmlType::BF16 => bf16_from_le(bytes, &mut got),
            GgmlType::Q8_0 => {
                for b in bytes.chunks_exact(34) {
                    let d = moela_kernels::fp::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                    got.extend(b[2..].iter().map(|&q| d * f32::from(q as i8)));
                }
            }
            GgmlType::Q4_0 => {
                for b in bytes.chunks_exact(18) {
                    let d = moela_kernels::fp::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                    let q = &b[2..];
                    got.extend(q.iter().map(|&x| d * (f32::from(x & 0x0f) - 8.0)));
                    got.extend(q.iter().map(|&x| d * (f32::from(x >> 4) - 8.0)));
                }
            }
            other => panic!("unexpected type {other}"),
        }
        // Values are f32s; serde_json's default float parsing may be 1 ulp off in f64.
        let want: Vec<f32> = want.iter().map(|&w| w as f32).collect();
        assert_eq!(got, want, "{}", t.name);
        assert_eq!(t.n_elements().unwrap() as usize, want.len());
    }
}

/// Copies every key and tensor of `f` into a new writer, in file order.
fn rewrite(f: &GgufFile) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata_entries() {
        w.add(k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ggml_type).unwrap();
    }
    let mut out = w.write_header(Vec::new(), "memory").unwrap();
    for t in f.tensors() {
        out.write_tensor(&t.name, f.tensor_bytes(t).unwrap())
            .unwrap();
    }
    out.finish().unwrap()
}

/// Our writer, given what gguf-py wrote, produces the same bytes: header layout, value
/// encodings, tensor offsets and all padding agree with llama.cpp's writer.
#[test]
fn writer_reproduces_python_files_byte_for_byte() {
    for file in ["all_types.gguf", "deepseek2_v3.gguf", "deepseek2_v2.gguf"] {
        let path = fixtures().join(file);
        let original = std::fs::read(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let ours = rewrite(&f);
        assert_eq!(ours.len(), original.len(), "{file}");
        assert!(ours == original, "{file}: bytes differ");
    }
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.into())
}

fn sample_values() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("v.u8", GgufValue::U8(7)),
        ("v.i8", GgufValue::I8(-7)),
        ("v.u16", GgufValue::U16(65535)),
        ("v.i16", GgufValue::I16(-32768)),
        ("v.u32", GgufValue::U32(u32::MAX)),
        ("v.i32", GgufValue::I32(i32::MIN)),
        ("v.f32", GgufValue::F32(-0.1)),
        ("v.bool", GgufValue::Bool(true)),
        ("v.string", s("ünïcödé ✓")),
        ("v.empty", s("")),
        ("v.u64", GgufValue::U64(u64::MAX)),
        ("v.i64", GgufValue::I64(i64::MIN)),
        ("v.f64", GgufValue::F64(1e-300)),
        ("v.strings", GgufValue::string_array(["a", "", "c"])),
        ("v.i32s", GgufValue::i32_array([1, -2, 3])),
        ("v.f32s", GgufValue::f32_array([0.5, f32::INFINITY])),
        (
            "v.bools",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::Bool,
                items: vec![GgufValue::Bool(false), GgufValue::Bool(true)],
            }),
        ),
        (
            "v.empty_array",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::U64,
                items: vec![],
            }),
        ),
        (
            "v.nested",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::Array,
                items: vec![
                    GgufValue::string_array(["x", "y"]),
                    GgufValue::string_array(Vec::<String>::new()),
                ],
            }),
        ),
    ]
}

/// Tensors of several types, a zero-sized one and one of an unknown type (id 99, 13 bytes):
/// `(name, ggml dims, type, bytes)`.
fn sample_tensors() -> Vec<(&'static str, Vec<u64>, GgmlType, Vec<u8>)> {
    let mut out = Vec::new();
    let specs: [(&str, &[u64], GgmlType); 7] = [
        ("a.f32", &[3, 5], GgmlType::F32),
        ("b.q8_0", &[64, 2], GgmlType::Q8_0),
        ("c.empty", &[0, 4], GgmlType::F32),
        ("d.q4_k", &[256, 1, 1, 2], GgmlType::Q4_K),
        ("e.unknown", &[10], GgmlType(99)),
        ("f.bf16", &[3], GgmlType::BF16),
        ("g.mxfp4", &[64, 3, 2], GgmlType::MXFP4),
    ];
    for (seed, (name, dims, ty)) in specs.into_iter().enumerate() {
        let n = ty.tensor_bytes(dims).unwrap_or(13) as usize;
        let bytes = (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed as u8))
            .collect();
        out.push((name, dims.to_vec(), ty, bytes));
    }
    out
}

/// A writer with `general.architecture`, the alignment, every sample value and tensor.
fn sample_writer(alignment: u32) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add("general.architecture", s("moela-test")).unwrap();
    w.set_alignment(alignment).unwrap();
    for (k, v) in sample_values() {
        w.add(k, v).unwrap();
    }
    for (name, dims, ty, bytes) in sample_tensors() {
        w.add_tensor_with_size(name, &dims, ty, bytes.len() as u64)
            .unwrap();
    }
    w
}

#[test]
fn writer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_tensors();
    for alignment in [1u32, 16, 32, 128] {
        let path = dir.path().join(format!("a{alignment}.gguf"));
        let mut out = sample_writer(alignment).create(&path).unwrap();
        assert_eq!(out.next_tensor(), Some(("a.f32", 60)));
        for (name, _, _, bytes) in &data {
            if *name == "b.q8_0" {
                // Streamed in three pieces.
                out.write_tensor_data(&bytes[..10]).unwrap();
                out.write_tensor_data(&bytes[10..50]).unwrap();
                out.write_tensor_data(&bytes[50..]).unwrap();
            } else if bytes.is_empty() && alignment < 32 {
                // Zero-sized tensors need no call; the writer moves past them.
                assert_eq!(out.next_tensor(), Some((*name, 0)));
            } else {
                out.write_tensor(name, bytes).unwrap();
            }
        }
        assert_eq!(out.next_tensor(), None);
        out.finish().unwrap();

        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.alignment(), u64::from(alignment));
        assert_eq!(f.data_offset() % u64::from(alignment), 0);
        let mut want: Vec<(&str, GgufValue)> = vec![
            ("general.architecture", s("moela-test")),
            ("general.alignment", GgufValue::U32(alignment)),
        ];
        want.extend(sample_values());
        let got: Vec<(&str, GgufValue)> =
            f.metadata_entries().map(|(k, v)| (k, v.clone())).collect();
        assert_eq!(got, want);
        assert_eq!(
            f.metadata("v.nested").unwrap().type_description(),
            "array of array of string"
        );
        assert_eq!(
            f.get_array("v.empty_array").unwrap().elem_type,
            GgufValueType::U64
        );
        for (name, dims, ty, bytes) in &data {
            let t = f.tensor(name).unwrap();
            assert_eq!((&t.dims, t.ggml_type), (dims, *ty), "{name}");
            assert_eq!(t.offset % u64::from(alignment), 0, "{name}");
            if *ty == GgmlType(99) {
                let e = f.tensor_bytes(t).unwrap_err().to_string();
                assert!(
                    e.contains("`e.unknown`") && e.contains("ggml type 99"),
                    "{e}"
                );
                // Still reachable raw, through the map.
                let start = (f.data_offset() + t.offset) as usize;
                assert_eq!(&f.mmap()[start..start + 13], &bytes[..]);
            } else {
                assert_eq!(f.tensor_bytes(t).unwrap(), &bytes[..], "{name}");
            }
        }
        assert_eq!(f.tensor("d.q4_k").unwrap().shape(), vec![2, 1, 1, 256]);
        // Reading a file we wrote and writing it again gives the same bytes.
        assert!(rewrite_all(&f) == std::fs::read(&path).unwrap());
    }
}

/// Like `rewrite`, with explicit sizes for unknown types.
fn rewrite_all(f: &GgufFile) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata_entries() {
        w.add(k, v.clone()).unwrap();
    }
    let mut blobs = Vec::new();
    for t in f.tensors() {
        let bytes = match f.tensor_bytes(t) {
            Ok(b) => b.to_vec(),
            Err(_) => {
                let start = (f.data_offset() + t.offset) as usize;
                f.mmap()[start..start + 13].to_vec()
            }
        };
        w.add_tensor_with_size(&t.name, &t.dims, t.ggml_type, bytes.len() as u64)
            .unwrap();
        blobs.push(bytes);
    }
    let mut out = w.write_header(Vec::new(), "memory").unwrap();
    for b in &blobs {
        out.write_tensor_data(b).unwrap();
    }
    out.finish().unwrap()
}

#[test]
fn writer_rejects_misuse() {
    let mut w = GgufWriter::new();
    w.add("k", GgufValue::U32(1)).unwrap();
    let m = w.add("k", GgufValue::U32(2)).unwrap_err().to_string();
    assert!(m.contains("`k` added twice"), "{m}");
    assert!(w.add("", GgufValue::U32(1)).is_err());
    for bad in [GgufValue::U32(0), GgufValue::U32(48), GgufValue::U64(32)] {
        let m = w.add("general.alignment", bad).unwrap_err().to_string();
        assert!(m.contains("general.alignment"), "{m}");
    }
    let mixed = GgufValue::Array(GgufArray {
        elem_type: GgufValueType::U32,
        items: vec![GgufValue::U32(1), GgufValue::I32(2)],
    });
    let m = w.add("mixed", mixed).unwrap_err().to_string();
    assert!(m.contains("`mixed`") && m.contains("index 1"), "{m}");
    let m = w
        .add_tensor("t", &[33], GgmlType::Q4_0)
        .unwrap_err()
        .to_string();
    assert!(m.contains("`t`") && m.contains("block size 32"), "{m}");
    assert!(w.add_tensor("t", &[1], GgmlType(99)).is_err());
    assert!(w.add_tensor("x".repeat(64), &[1], GgmlType::F32).is_err());
    assert!(w.add_tensor("t5", &[1, 1, 1, 1, 1], GgmlType::F32).is_err());
    assert!(w
        .add_tensor_with_size("t", &[4], GgmlType::F32, 15)
        .is_err());
    w.add_tensor("t", &[4], GgmlType::F32).unwrap();
    assert!(w.add_tensor("t", &[4], GgmlType::F32).is_err());
    w.add_tensor("u", &[2], GgmlType::F32).unwrap();

    let mut out = w.write_header(Vec::new(), "mem.gguf").unwrap();
    let m = out.write_tensor("u", &[0; 8]).unwrap_err().to_string();
    assert!(m.contains("out of order") && m.contains("`t`"), "{m}");
    let m = out.write_tensor("t", &[0; 15]).unwrap_err().to_string();
    assert!(m.contains("got 15 bytes, expected 16"), "{m}");
    let m = out.write_tensor_data(&[0; 17]).unwrap_err().to_string();
    assert!(m.contains("only 16"), "{m}");
    out.write_tensor_data(&[0; 16]).unwrap();
    let m = out.finish().err().unwrap().to_string();
    assert!(m.contains("mem.gguf") && m.contains("`u`"), "{m}");
}

/// Writes a file for `tools/make_gguf_fixtures.py --check` (the gguf package's reader) when
/// `MOELA_GGUF_CHECK_OUT` names the output (plus `<output>.expected.json`); otherwise into a
/// temporary directory, read back by our reader.
#[test]
fn writer_output_for_python() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var_os("MOELA_GGUF_CHECK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("moela.gguf"));
    // What gguf-py 0.19 can read back: no empty arrays (its reader is fine, but we keep the
    // comparison simple), no infinities in JSON, no unknown tensor types.
    let skip = ["v.empty_array", "v.nested", "v.f32s"];
    let mut w = GgufWriter::new();
    w.add("general.architecture", s("moela-test")).unwrap();
    w.set_alignment(64).unwrap();
    for (k, v) in sample_values()
        .into_iter()
        .filter(|(k, _)| !skip.contains(k))
    {
        w.add(k, v).unwrap();
    }
    w.add("v.f32s", GgufValue::f32_array([0.5, -0.1, 3.0]))
        .unwrap();
    w.add(
        "v.nested",
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::Array,
            items: vec![
                GgufValue::string_array(["x", "y"]),
                GgufValue::string_array(["z"]),
            ],
        }),
    )
    .unwrap();
    let tensors: Vec<_> = sample_tensors()
        .into_iter()
        .filter(|t| t.2 != GgmlType(99))
        .collect();
    for (name, dims, ty, _) in &tensors {
        w.add_tensor(*name, dims, *ty).unwrap();
    }
    let mut out = w.create(&path).unwrap();
    for (name, _, _, bytes) in &tensors {
        out.write_tensor(name, bytes).unwrap();
    }
    out.finish().unwrap();

    let f = GgufFile::open(&path).unwrap();
    let meta: Vec<Value> = f
        .metadata_entries()
        .map(|(k, v)| {
            serde_json::json!({"key": k, "type": v.type_description(), "value": exact_json(v)})
        })
        .collect();
    let infos: Vec<Value> = f
        .tensors()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "type": t.ggml_type.0, "dims": t.dims, "offset": t.offset,
                "hex": hex(f.tensor_bytes(t).unwrap()),
            })
        })
        .collect();
    assert_eq!(infos.len(), 6);
    let expected =
        serde_json::json!({"alignment": f.alignment(), "metadata": meta, "tensors": infos});
    let mut exp_path = path.into_os_string();
    exp_path.push(".expected.json");
    std::fs::write(&exp_path, serde_json::to_string_pretty(&expected).unwrap()).unwrap();
}

/// Values as the Python reader returns them: f32 as the exact f64 of the f32.
fn exact_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::F32(x) => serde_json::json!(f64::from(*x)),
        GgufValue::Array(a) => Value::Array(a.items.iter().map(exact_json).collect()),
        other => other.to_json(),
    }
}
