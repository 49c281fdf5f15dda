//! One entry point for every checkpoint format: an HF directory or a GGUF file.

use std::io::Read;
use std::path::Path;

use moela_kernels::{DType, Footprint, Placement};
use moela_model::{Config, Model, SamplingDefaults};

use crate::error::LoadError;
use crate::gguf::GgufFile;
use crate::gguf_model::GgufModel;
use crate::safetensors_dir::{Checkpoint, LoadOptions};

/// A stored tensor, for summaries.
#[derive(Clone, Debug)]
pub struct TensorSummary {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// What [`ModelFiles::placement`] decided and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementChoice {
    pub placement: Placement,
    /// The weights' bytes by kind, and what `Fastest` would copy into anonymous memory.
    pub footprint: Footprint,
    /// The memory the weights may take: the `memory_budget` asked for, else what is available
    /// at the decision ([`moela_kernels::memory::available_bytes`]) less a margin.
    pub budget: Option<u64>,
}

/// Whether a stored tensor belongs to the routed experts (GGUF's merged `*_exps` tensors;
/// `experts.{e}.*` in transformers' and DeepSeek's names — not the shared experts).
fn is_routed_expert(name: &str) -> bool {
    name.contains("_exps.") || name.contains(".experts.")
}

/// An opened checkpoint of either format.
pub enum ModelFiles {
    Hf(Checkpoint),
    Gguf(GgufModel),
}

fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

impl ModelFiles {
    /// Opens an HF checkpoint directory or a `.gguf` file.
    pub fn open(path: &Path) -> Result<ModelFiles, LoadError> {
        if path.is_dir() {
            Ok(ModelFiles::Hf(Checkpoint::open(path)?))
        } else if is_gguf(path) {
            Ok(ModelFiles::Gguf(GgufModel::open(path)?))
        } else if path.exists() {
            Err(LoadError::file(
                path,
                "neither an HF checkpoint directory nor a GGUF file",
            ))
        } else {
            Err(LoadError::file(path, "no such file or directory"))
        }
    }

    pub fn config(&self) -> &Config {
        match self {
            ModelFiles::Hf(c) => &c.config,
            ModelFiles::Gguf(g) => &g.config,
        }
    }

    /// Loads the model, placed as [`ModelFiles::placement`] resolves `opts`.
    pub fn load_model(&self, opts: &LoadOptions) -> Result<Model, LoadError> {
        self.load_placed(opts, self.placement(opts).placement)
    }

    /// Loads the model with its matrices placed as `placement` (a [`ModelFiles::placement`]
    /// already made: its caller reports the choice, and memory is read once).
    pub fn load_placed(
        &self,
        opts: &LoadOptions,
        placement: Placement,
    ) -> Result<Model, LoadError> {
        let opts = LoadOptions {
            placement,
            ..opts.clone()
        };
        match self {
            ModelFiles::Hf(c) => c.load_model_with(&opts),
            ModelFiles::Gguf(g) => g.load_model_with(&opts),
        }
    }

    /// The model's recommended sampling: `generation_config.json` of an HF directory, the
    /// `general.sampling.*` keys of a GGUF file (llama.cpp's converter copies them there).
    pub fn sampling_defaults(&self) -> Result<SamplingDefaults, LoadError> {
        let (path, source, json) = match self {
            ModelFiles::Hf(c) => {
                let p = c.dir.join("generation_config.json");
                if !p.exists() {
                    return Ok(SamplingDefaults::default());
                }
                let text = std::fs::read_to_string(&p).map_err(|e| LoadError::io(&p, e))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| LoadError::file(&p, format!("not valid JSON: {e}")))?;
                (p, "generation_config.json", v)
            }
            ModelFiles::Gguf(g) => (
                g.path.clone(),
                "general.sampling",
                gguf_sampling_json(&g.file)?,
            ),
        };
        SamplingDefaults::from_generation_config(source, &json)
            .map_err(|source| LoadError::Model { path, source })
    }

    /// Where the weights go when `opts.placement` is asked for, with `opts.memory_budget` bytes
    /// for them (`None`: what is available now less a margin): see
    /// [`Placement::within_memory`]. `Fastest`'s copies are a GGUF file's Q4_0/Q8_0 matrices,
    /// repacked into anonymous memory; an HF checkpoint's stored types are read in place either
    /// way. With `opts.quant` the placement stays as asked: quantizing while loading makes every
    /// matrix a copy in RAM, so nothing is left in the mapping to place.
    pub fn placement(&self, opts: &LoadOptions) -> PlacementChoice {
        let requested = opts.placement;
        // (name, stored bytes, whether `Fastest` copies it)
        let tensors: Vec<(&str, u64, bool)> = match self {
            ModelFiles::Hf(c) => c
                .tensor_infos()
                .into_iter()
                .map(|t| (t.name.as_str(), t.n_bytes(), false))
                .collect(),
            ModelFiles::Gguf(g) => g
                .file
                .tensors()
                .iter()
                .map(|t| {
                    let rows = t.dims.get(1).map_or(1, |&r| r as usize);
                    let copied = DType::from_ggml_type(t.ggml_type.0)
                        .is_some_and(|d| Placement::Fastest.copies(d, rows));
                    (t.name.as_str(), t.n_bytes().unwrap_or(0), copied)
                })
                .collect(),
        };
        let mut footprint = Footprint::default();
        for (name, bytes, copied) in tensors {
            footprint.weights = footprint.weights.saturating_add(bytes);
            if is_routed_expert(name) {
                footprint.experts = footprint.experts.saturating_add(bytes);
            }
            if copied {
                footprint.copies = footprint.copies.saturating_add(bytes);
            }
        }
        let budget = opts
            .memory_budget
            .or_else(|| moela_kernels::memory::budget(moela_kernels::memory::available_bytes()));
        PlacementChoice {
            placement: match opts.quant {
                Some(_) => requested,
                None => requested.within_memory(&footprint, budget),
            },
            footprint,
            budget,
        }
    }

    /// Every stored tensor, sorted by name.
    pub fn tensors(&self) -> Vec<TensorSummary> {
        let mut v: Vec<TensorSummary> = match self {
            ModelFiles::Hf(c) => c
                .tensor_infos()
                .into_iter()
                .map(|t| TensorSummary {
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                })
                .collect(),
            ModelFiles::Gguf(g) => g
                .file
                .tensors()
                .iter()
                .map(|t| TensorSummary {
                    name: t.name.clone(),
                    dtype: moela_kernels::DType::from_ggml_type(t.ggml_type.0).map_or_else(
                        || format!("ggml type {}", t.ggml_type.0),
                        |d| d.name().to_string(),
                    ),
                    shape: t.shape().iter().map(|&d| d as usize).collect(),
                })
                .collect(),
        };
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Per stored element type: the number of tensors and their elements (`inspect`'s tally).
    pub fn dtype_totals(&self) -> std::collections::BTreeMap<String, (usize, u64)> {
        let mut totals: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
        for t in self.tensors() {
            let e = totals.entry(t.dtype).or_default();
            e.0 += 1;
            e.1 = e.1.saturating_add(
                t.shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                    .unwrap_or(u64::MAX),
            );
        }
        totals
    }

    /// Bytes of the checkpoint files.
    pub fn file_bytes(&self) -> u64 {
        match self {
            ModelFiles::Hf(c) => c.file_bytes(),
            ModelFiles::Gguf(g) => g.file.mmap().len() as u64,
        }
    }
}

/// A GGUF file's `general.sampling.*` keys under their `generation_config.json` names (the
/// reverse of llama.cpp's converter, `gguf.Metadata.load`).
fn gguf_sampling_json(f: &GgufFile) -> Result<serde_json::Value, LoadError> {
    let mut v = serde_json::Map::new();
    for (key, field) in [
        ("general.sampling.temp", "temperature"),
        ("general.sampling.top_p", "top_p"),
        ("general.sampling.min_p", "min_p"),
        ("general.sampling.penalty_repeat", "repetition_penalty"),
    ] {
        if let Some(x) = f.opt_f64(key)? {
            v.insert(field.into(), serde_json::json!(x));
        }
    }
    if let Some(k) = f.opt_i64("general.sampling.top_k")? {
        v.insert("top_k".into(), serde_json::json!(k));
    }
    Ok(serde_json::Value::Object(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    #[test]
    fn gguf_sampling_keys_read_as_generation_config() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.gguf");
        let mut w = GgufWriter::new();
        w.add_f32("general.sampling.temp", 0.6).unwrap();
        w.add_f32("general.sampling.top_p", 0.95).unwrap();
        w.add_u32("general.sampling.top_k", 40).unwrap();
        w.create(&path).unwrap().finish().unwrap();
        let f = GgufFile::open(&path).unwrap();
        let v = gguf_sampling_json(&f).unwrap();
        let d = SamplingDefaults::from_generation_config("general.sampling", &v).unwrap();
        assert_eq!(d.temperature, Some(0.6));
        assert_eq!(d.top_p, Some(0.95));
        assert_eq!(d.top_k, Some(40));
        assert_eq!((d.min_p, d.repetition_penalty), (None, None));
    }
}
