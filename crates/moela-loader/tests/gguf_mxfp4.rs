//! A `deepseek2` GGUF whose routed experts are MXFP4 (the type llama.cpp's converter repacks
//! DeepSeek-V4's FP4 experts into) loads them as `DType::MXFP4` matrices holding the file's
//! blocks.

use std::path::{Path, PathBuf};

use moela_kernels::{DType, QMat};
use moela_loader::gguf::{GgmlType, GgufFile, GgufWriter};
use moela_loader::{export_gguf, GgufModel, LoadOptions, ModelFiles};
use moela_model::weights::TensorRef;

fn v2_lite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/v2_lite")
}

/// Rewrites the F32 GGUF at `src` into `dst` with every `*_exps` tensor quantized to MXFP4.
fn with_mxfp4_experts(src: &Path, dst: &Path) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata_entries() {
        w.add(k, v.clone()).unwrap();
    }
    let mut data: Vec<Vec<u8>> = Vec::new();
    for t in f.tensors() {
        let bytes = f.tensor_bytes(t).unwrap();
        if t.name.ends_with("_exps.weight") {
            assert_eq!(t.ggml_type, GgmlType::F32, "{}", t.name);
            // ggml dims {cols, rows, experts}: the experts' rows one after another.
            let cols = t.dims[0] as usize;
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let q = QMat::from_f32(DType::MXFP4, values.len() / cols, cols, &values).unwrap();
            w.add_tensor(&t.name, &t.dims, GgmlType::MXFP4).unwrap();
            data.push(q.bytes().to_vec());
        } else {
            w.add_tensor(&t.name, &t.dims, t.ggml_type).unwrap();
            data.push(bytes.to_vec());
        }
    }
    let mut out = w.create(dst).unwrap();
    for (t, d) in f.tensors().iter().zip(&data) {
        out.write_tensor(&t.name, d).unwrap();
    }
    out.finish().unwrap();
}

#[test]
fn mxfp4_experts_load_as_mxfp4() {
    let dir = v2_lite();
    let opts = LoadOptions::default();
    let model = ModelFiles::open(&dir).unwrap().load_model(&opts).unwrap();
    let tok = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let cfg = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (f32_path, path) = (tmp.path().join("f32.gguf"), tmp.path().join("mxfp4.gguf"));
    export_gguf(&model, &tok, Some(&cfg), DType::F32, "v2_lite", &f32_path).unwrap();
    with_mxfp4_experts(&f32_path, &path);

    let files = ModelFiles::open(&path).unwrap();
    let exps: Vec<_> = files
        .tensors()
        .into_iter()
        .filter(|t| t.name.ends_with("_exps.weight"))
        .collect();
    assert!(!exps.is_empty());
    assert!(exps.iter().all(|t| t.dtype == "mxfp4"), "{exps:?}");

    let loaded = GgufModel::open(&path)
        .unwrap()
        .load_model_with(&opts)
        .unwrap();
    let want = model.weights.named_tensors();
    let got = loaded.weights.named_tensors();
    assert_eq!(want.len(), got.len());
    let mut experts = 0;
    for ((name, w), (name2, g)) in want.iter().zip(&got) {
        assert_eq!(name, name2);
        let (TensorRef::Matrix(w), TensorRef::Matrix(g)) = (w, g) else {
            continue;
        };
        if name.contains(".mlp.experts.") {
            experts += 1;
            assert_eq!(g.dtype, DType::MXFP4, "{name}");
            let q = QMat::from_f32(DType::MXFP4, w.rows, w.cols, &w.to_f32().data).unwrap();
            assert_eq!(g.bytes(), q.bytes(), "{name}");
            assert_eq!(g.to_f32(), q.to_f32(), "{name}");
        } else {
            assert_ne!(g.dtype, DType::MXFP4, "{name}");
        }
    }
    // 2 MoE layers × 8 experts × gate, up, down.
    assert_eq!(experts, 2 * 8 * 3);
}
