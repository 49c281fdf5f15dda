//! An HF checkpoint directory: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, each memory-mapped.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moela_kernels::mmap::{map_readonly, Mmap};
use moela_kernels::{DType, Placement, QMat, Storage, FP8_BLOCK};
use moela_model::{Config, KvType, Model, ModelError, ModelType, WeightSource};
use safetensors::{Dtype, SafeTensors};

use crate::error::LoadError;
use crate::progress::LoadProgress;
use crate::release::{self, V4ReleaseNames};

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Show a progress bar on a terminal when loading takes more than a second.
    pub progress: bool,
    /// Quantize weight matrices to this type while loading (routers and matrices whose
    /// width is not a multiple of the block size stay as stored).
    pub quant: Option<DType>,
    /// KV cache element type; `None`: F32 for safetensors checkpoints (exact, as the
    /// reference), F16 for GGUF files (as llama.cpp).
    pub kv_type: Option<KvType>,
    /// Where weight matrices go ([`Placement`]): by default packed copies where this CPU's
    /// kernels run faster on them; `InPlace` keeps every matrix in the file mapping.
    pub placement: Placement,
    /// Bytes of memory the weights may take (`None`: what is available at load less a
    /// margin); a model larger than that keeps its routed experts in the file mapping with
    /// the hottest resident (see [`Placement::within_memory`]).
    pub memory_budget: Option<u64>,
}

/// One tensor as stored.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Index into the checkpoint's shard list.
    shard: usize,
    /// Byte range within the shard's mapping.
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// Bytes as stored.
    pub fn n_bytes(&self) -> u64 {
        self.end.saturating_sub(self.start) as u64
    }
}

struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
}

/// An opened checkpoint directory (config parsed, shards mapped, headers validated).
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    /// The raw config.json, for fields the model does not use.
    pub config_json: serde_json::Value,
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorInfo>,
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

impl Checkpoint {
    /// Opens `dir`, parses `config.json` and maps the safetensors files.
    pub fn open(dir: &Path) -> Result<Checkpoint, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::file(
                dir,
                "not a directory (expected an HF checkpoint directory)",
            ));
        }
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| LoadError::io(&cfg_path, e))?;
        let config_json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::file(&cfg_path, format!("not valid JSON: {e}")))?;
        let config = Config::from_hf_value(&config_json).map_err(|source| LoadError::Model {
            path: cfg_path.clone(),
            source,
        })?;

        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LoadError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| LoadError::file(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LoadError::file(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<&str> = Vec::new();
            for (tensor, file) in map {
                let f = file.as_str().ok_or_else(|| {
                    LoadError::file(
                        &index_path,
                        format!("weight_map entry `{tensor}` is not a file name"),
                    )
                })?;
                if f.contains('/') || f.contains('\\') || f.starts_with("..") {
                    return Err(LoadError::file(
                        &index_path,
                        format!("weight_map file `{f}` is not a plain file name"),
                    ));
                }
                if !names.contains(&f) {
                    names.push(f);
                }
            }
            names.sort_unstable();
            names.iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(LoadError::file(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for (si, path) in files.into_iter().enumerate() {
            let file = File::open(&path).map_err(|e| LoadError::io(&path, e))?;
            let map = map_readonly(&file).map_err(|e| LoadError::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                LoadError::file(
                    &path,
                    format!("not a valid safetensors file ({e:?}); truncated or corrupt?"),
                )
            })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                tensors.insert(
                    name.clone(),
                    TensorInfo {
                        name,
                        dtype: dtype_name(info.dtype),
                        shape: info.shape.clone(),
                        shard: si,
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            shards.push(Shard {
                path,
                map: Arc::new(map),
            });
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            config_json,
            shards,
            tensors,
        })
    }

    /// Every stored tensor, sorted by name.
    pub fn tensor_infos(&self) -> Vec<&TensorInfo> {
        let mut v: Vec<&TensorInfo> = self.tensors.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Bytes of all shards.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.map.len() as u64).sum()
    }

    /// Builds the model. With `progress`, a progress bar appears on a terminal once loading
    /// has taken more than a second.
    pub fn load_model(&self, progress: bool) -> Result<Model, LoadError> {
        self.load_model_with(&LoadOptions {
            progress,
            ..LoadOptions::default()
        })
    }

    /// Builds the model with options (progress bar, quantize-on-load).
    pub fn load_model_with(&self, opts: &LoadOptions) -> Result<Model, LoadError> {
        if let Some([r, c]) = self.config.fp8_block {
            if (r, c) != (FP8_BLOCK, FP8_BLOCK) {
                return Err(LoadError::file(
                    &self.dir.join("config.json"),
                    format!("FP8 weight_block_size [{r}, {c}] is not supported (only [128, 128])"),
                ));
            }
        }
        let names = match self.config.model_type {
            ModelType::DeepseekV4 => {
                V4ReleaseNames::detect(self.tensors.keys().map(String::as_str))
            }
            _ => None,
        };
        let mut src = Source {
            ckpt: self,
            quant: opts.quant,
            placement: opts.placement,
            names,
        };
        let mut bar = LoadProgress::new(opts.progress);
        let mut m = Model::load(self.config.clone(), &mut src, &mut |d, t| bar.update(d, t))
            .map_err(|source| self.model_error(source))?;
        m.set_kv_type(opts.kv_type.unwrap_or(KvType::F32));
        Ok(m)
    }

    /// Attaches the file that holds the offending tensor (or the directory) to a model error.
    fn model_error(&self, source: ModelError) -> LoadError {
        let path = match &source {
            ModelError::Shape { name, .. } | ModelError::Tensor { name, .. } => self
                .tensors
                .get(name)
                .map_or(self.dir.clone(), |t| self.shards[t.shard].path.clone()),
            _ => self.dir.clone(),
        };
        LoadError::Model { path, source }
    }

    /// Tensor `name` as f32, shape-checked, FP8 block-dequantized when stored so.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self.checked(name, shape)?;
        // Any tensor is a [outer, last] matrix for conversion purposes.
        let cols = shape.last().copied().unwrap_or(1);
        let rows = shape.iter().product::<usize>() / cols.max(1);
        Ok(self.stored_matrix(name, t, rows, cols)?.to_f32().data)
    }

    /// The info of tensor `name`, checked to have `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if t.shape != shape {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// Weight matrix `name` (`[rows, cols]`) as stored, mapped where its layout is a kernel's:
    /// F32/F16/BF16, FP8 with its block scales, DeepSeek's FP4 experts repacked into `MXFP4`.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        if let Some(m) = self.fp4_matrix(name, rows, cols)? {
            return Ok(m);
        }
        let t = self.checked(name, &[rows, cols])?;
        self.stored_matrix(name, t, rows, cols)
    }

    /// The stored bytes of tensor `t`.
    pub(crate) fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.shards[t.shard].map[t.start..t.end]
    }

    /// The `[⌈rows/128⌉, ⌈cols/128⌉]` block scales of FP8 weight `name`: Hugging Face's
    /// `<name>_scale_inv` (V3) or DeepSeek's `<stem>.scale` (V4's release names, ue8m0).
    fn fp8_scales(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, ModelError> {
        let grid = [rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)];
        let hf = format!("{name}_scale_inv");
        let release = release::scale_name(name);
        for sname in std::iter::once(hf.clone()).chain(release.clone()) {
            if let Some(t) = self.tensors.get(&sname) {
                if t.dtype == "F8_E8M0" {
                    let t = self.checked(&sname, &grid)?;
                    return release::e8m0_values(&sname, self.tensor_bytes(t));
                }
                return self.tensor_f32(&sname, &grid);
            }
        }
        let also = release.map_or(String::new(), |r| format!(" or `{r}`"));
        Err(ModelError::Tensor {
            name: name.into(),
            msg: format!("FP8 weight without its block scales `{hf}`{also}"),
        })
    }

    /// Tensor `name` as a `[rows, cols]` matrix if it is stored as DeepSeek-V4's FP4 experts
    /// (see [`release::fp4_codes`]): repacked exactly into `MXFP4` blocks.
    fn fp4_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<QMat>, ModelError> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        if !release::fp4_codes(&t.dtype, &t.shape, rows, cols) {
            return Ok(None);
        }
        let err = |msg: String| ModelError::Tensor {
            name: name.into(),
            msg,
        };
        let sname = release::scale_name(name)
            .filter(|s| self.tensors.contains_key(s))
            .ok_or_else(|| err("FP4 codes without their `.scale` tensor".into()))?;
        let st = self.checked(&sname, &[rows, cols / moela_kernels::mxfp4::QK_MXFP4])?;
        if !matches!(st.dtype.as_str(), "F8_E8M0" | "U8" | "I8") {
            return Err(ModelError::Tensor {
                name: sname,
                msg: format!("FP4 scales stored as {} (expected F8_E8M0)", st.dtype),
            });
        }
        QMat::from_mxfp4_release(rows, cols, self.tensor_bytes(t), self.tensor_bytes(st))
            .map(Some)
            .map_err(|e| err(e.to_string()))
    }

    /// Tensor `t` (called `name`) as a `[rows, cols]` matrix in its stored type, mapped without
    /// copying; FP8 weights carry their block scales.
    fn stored_matrix(
        &self,
        name: &str,
        t: &TensorInfo,
        rows: usize,
        cols: usize,
    ) -> Result<QMat, ModelError> {
        let err = |msg: String| ModelError::Tensor {
            name: name.into(),
            msg,
        };
        let dtype = stored_dtype(&t.dtype).ok_or_else(|| {
            err(format!(
                "unsupported dtype {} (expected F32, F16, BF16 or F8_E4M3)",
                t.dtype
            ))
        })?;
        let scales = if dtype == DType::F8E4M3Block128 {
            Some(self.fp8_scales(name, rows, cols)?)
        } else {
            None
        };
        let storage = Storage::mapped(self.shards[t.shard].map.clone(), t.start, t.end - t.start)
            .map_err(|e| err(e.to_string()))?;
        QMat::from_storage(dtype, rows, cols, storage, scales).map_err(|e| err(e.to_string()))
    }
}

/// Quantize-on-load: `m` converted to `quant` when asked, except routers (the reference computes
/// them in f32) and matrices whose width is not a multiple of the block size.
pub(crate) fn requantize(m: QMat, name: &str, quant: Option<DType>) -> Result<QMat, ModelError> {
    match quant {
        Some(q)
            if q != m.dtype
                && m.cols.is_multiple_of(q.block_size())
                && !name.ends_with(".mlp.gate.weight") =>
        {
            QMat::from_f32(q, m.rows, m.cols, &m.to_f32().data).map_err(|e| ModelError::Tensor {
                name: name.into(),
                msg: e.to_string(),
            })
        }
        _ => Ok(m),
    }
}

struct Source<'a> {
    ckpt: &'a Checkpoint,
    quant: Option<DType>,
    placement: Placement,
    /// DeepSeek-V4 in the release's own names: where each requested name is stored.
    names: Option<V4ReleaseNames>,
}

impl Source<'_> {
    /// Where tensor `name` (as the model asks for it) is stored.
    fn stored<'n>(&'n self, name: &'n str) -> &'n str {
        self.names.as_ref().map_or(name, |n| n.stored(name))
    }
}

fn stored_dtype(name: &str) -> Option<DType> {
    match name {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        "F8_E4M3" => Some(DType::F8E4M3Block128),
        _ => None,
    }
}

impl WeightSource for Source<'_> {
    fn placement(&self) -> Placement {
        self.placement
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        self.ckpt.tensor_f32(self.stored(name), shape)
    }

    fn contains(&self, name: &str) -> bool {
        self.ckpt.tensors.contains_key(self.stored(name))
    }

    /// The stored bytes, mapped without copying (FP8 with its block scales, FP4 experts
    /// repacked), optionally quantized.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        // Requantized by the requested name (its rules know routers by their HF names).
        let m = self.ckpt.matrix(self.stored(name), rows, cols)?;
        requantize(m, name, self.quant)
    }

    /// Rows of a float tensor, mapped without copying (one expert of a stacked tensor),
    /// optionally quantized.
    fn matrix_rows(
        &mut self,
        name: &str,
        shape: &[usize],
        first: usize,
        rows: usize,
    ) -> Result<QMat, ModelError> {
        // The release stores one matrix per expert and projection.
        if let Some(e) = self
            .names
            .as_ref()
            .and_then(|n| n.expert(name, shape, first, rows))
        {
            let (stored, rows, cols) = e?;
            return requantize(self.ckpt.matrix(&stored, rows, cols)?, name, self.quant);
        }
        let t = self.ckpt.checked(name, shape)?;
        let err = |msg: String| ModelError::Tensor {
            name: name.into(),
            msg,
        };
        let dtype = match stored_dtype(&t.dtype) {
            Some(d @ (DType::F32 | DType::F16 | DType::BF16)) => d,
            _ => {
                return Err(err(format!(
                    "stacked tensors are read as F32, F16 or BF16, found {}",
                    t.dtype
                )))
            }
        };
        let cols = shape.last().copied().unwrap_or(1);
        let total = shape.iter().product::<usize>() / cols.max(1);
        let row_bytes = dtype
            .matrix_bytes(1, cols)
            .map_err(|e| err(e.to_string()))?;
        let end = first.checked_add(rows).filter(|&e| e <= total);
        let Some(end) = end else {
            return Err(err(format!("rows {first}+{rows} are outside {shape:?}")));
        };
        let (start, len) = (t.start + first * row_bytes, (end - first) * row_bytes);
        let storage = Storage::mapped(self.ckpt.shards[t.shard].map.clone(), start, len)
            .map_err(|e| err(e.to_string()))?;
        let m =
            QMat::from_storage(dtype, rows, cols, storage, None).map_err(|e| err(e.to_string()))?;
        requantize(m, name, self.quant)
    }

    /// An I64 or I32 tensor (DeepSeek-V4's `tid2eid`).
    fn load_ints(&mut self, name: &str, shape: &[usize]) -> Result<Vec<i64>, ModelError> {
        let t = self.ckpt.checked(self.stored(name), shape)?;
        let bytes = &self.ckpt.shards[t.shard].map[t.start..t.end];
        match t.dtype.as_str() {
            "I64" => Ok(bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()),
            "I32" => Ok(bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect()),
            d => Err(ModelError::Tensor {
                name: name.into(),
                msg: format!("expected an I64 or I32 tensor, found {d}"),
            }),
        }
    }
}
