//! A `deepseek2`, `deepseek32`, `deepseek4`, `qwen2` or `llama` GGUF file as a model: config from its metadata, weights
//! mapped without copying (quantized blocks stay quantized; `llama` q/k rows are un-permuted
//! into an owned copy), tokenizer rebuilt from `tokenizer.ggml.*`.

use std::path::{Path, PathBuf};

use moela_kernels::{DType, Mat, Placement, QMat, Storage};
use moela_model::{Config, KvType, Model, ModelError, RopeScaling, WeightSource};

use crate::error::LoadError;
use crate::gguf::{
    deepseek2_config_json, deepseek4_config_json, dense_config_json, hf_name_to_gguf,
    kv_b_from_split, rope_permuted, tokenizer_json_from_gguf, unpermute_rope_rows, Family,
    GgufFile, GgufTarget, HfName, KvBDims, RopeHeads, DENSE_ARCHITECTURES, MLA_ARCHS,
};
use crate::progress::LoadProgress;
use crate::release::v4_expert_rows;
use crate::safetensors_dir::{requantize, LoadOptions};

/// An opened `deepseek2`, `deepseek32`, `qwen2` or `llama` GGUF file.
pub struct GgufModel {
    pub path: PathBuf,
    pub file: GgufFile,
    /// `general.architecture`.
    pub arch: String,
    pub config: Config,
    pub config_json: serde_json::Value,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<GgufModel, LoadError> {
        let file = GgufFile::open(path)?;
        let arch = file.architecture()?.to_string();
        let model_err = |source| LoadError::Model {
            path: path.to_path_buf(),
            source,
        };
        let (config, config_json) = if MLA_ARCHS.contains(&arch.as_str()) {
            let json = deepseek2_config_json(&file)?;
            (Config::from_hf_value(&json).map_err(model_err)?, json)
        } else if arch == "deepseek4" {
            let json = deepseek4_config_json(&file)?;
            (Config::from_hf_value(&json).map_err(model_err)?, json)
        } else if DENSE_ARCHITECTURES.contains(&arch.as_str()) {
            let json = dense_config_json(&file)?;
            let mut c = Config::from_hf_value(&json).map_err(model_err)?;
            // Biases as the file has them (llama.cpp treats each as optional).
            if let Some(g) = c.gqa_mut() {
                g.qkv_bias = file.tensor("blk.0.attn_q.bias").is_some();
                g.o_bias = file.tensor("blk.0.attn_output.bias").is_some();
            }
            if let Some(factors) = rope_freqs(&file)? {
                if c.rope_scaling.is_some() {
                    return Err(LoadError::file(
                        path,
                        "both rope.scaling.type and a rope_freqs tensor are present",
                    ));
                }
                c.rope_scaling = Some(RopeScaling::FreqFactors(factors));
            }
            c.validate().map_err(model_err)?;
            (c, json)
        } else {
            return Err(LoadError::file(
                path,
                format!(
                    "GGUF architecture {arch:?} is not supported (expected deepseek2, deepseek32, deepseek4, qwen2 or llama)"
                ),
            ));
        };
        Ok(GgufModel {
            path: path.to_path_buf(),
            file,
            arch,
            config,
            config_json,
        })
    }

    /// `(tokenizer.json, tokenizer_config.json)` rebuilt from the metadata.
    pub fn tokenizer_json(&self) -> Result<(String, String), LoadError> {
        Ok(tokenizer_json_from_gguf(&self.file)?)
    }

    pub fn load_model_with(&self, opts: &LoadOptions) -> Result<Model, LoadError> {
        let mut src = GgufSource {
            g: self,
            quant: opts.quant,
            placement: opts.placement,
        };
        let mut bar = LoadProgress::new(opts.progress);
        let mut m = Model::load(self.config.clone(), &mut src, &mut |d, t| bar.update(d, t))
            .map_err(|source| LoadError::Model {
                path: self.path.clone(),
                source,
            })?;
        m.set_kv_type(opts.kv_type.unwrap_or(KvType::F16));
        Ok(m)
    }

    /// A stored tensor (or one expert's slice of a stacked tensor) as a `[rows, cols]` matrix.
    fn matrix_at(
        &self,
        gguf_name: &str,
        expert: Option<usize>,
        hf_name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<QMat, ModelError> {
        let err = |msg: String| ModelError::Tensor {
            name: hf_name.to_string(),
            msg: format!("{msg} (GGUF tensor `{gguf_name}`)"),
        };
        let info = self
            .file
            .tensor(gguf_name)
            .ok_or_else(|| ModelError::MissingTensor(format!("{hf_name} (GGUF `{gguf_name}`)")))?;
        let shape: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
        // A plain matrix may be stored with its rows split over outer axes (k_b: [H, r, dn]).
        let (want, n_experts) = match expert {
            None if shape.len() > 2
                && shape.iter().product::<usize>() == rows * cols
                && shape.last() == Some(&cols) =>
            {
                (shape.clone(), 1)
            }
            None => (vec![rows, cols], 1),
            Some(_) => match shape.first() {
                Some(&e) => (vec![e, rows, cols], e),
                None => (vec![0, rows, cols], 0),
            },
        };
        if shape != want {
            return Err(ModelError::Shape {
                name: format!("{hf_name} (GGUF `{gguf_name}`)"),
                expected: want,
                found: shape,
            });
        }
        let dtype = DType::from_ggml_type(info.ggml_type.0)
            .ok_or_else(|| err(format!("ggml type {} is not supported", info.ggml_type.0)))?;
        let range = self
            .file
            .tensor_range(info)
            .map_err(|e| err(e.to_string()))?;
        let per = (range.end - range.start) / n_experts.max(1);
        let offset = range.start + expert.unwrap_or(0) * per;
        let storage = Storage::mapped(self.file.mmap().clone(), offset, per)
            .map_err(|e| err(e.to_string()))?;
        QMat::from_storage(dtype, rows, cols, storage, None).map_err(|e| err(e.to_string()))
    }
}

/// `rope_freqs.weight` (Llama-3 RoPE scaling as per-frequency divisors), when present.
fn rope_freqs(file: &GgufFile) -> Result<Option<Vec<f32>>, LoadError> {
    let Some(info) = file.tensor("rope_freqs.weight") else {
        return Ok(None);
    };
    let err =
        |msg: String| LoadError::file(file.path(), format!("tensor `rope_freqs.weight`: {msg}"));
    let shape = info.shape();
    let [n] = shape.as_slice() else {
        return Err(err(format!("expected one dimension, found {shape:?}")));
    };
    let n = usize::try_from(*n).map_err(|_| err(format!("length {n} does not fit")))?;
    let dtype = DType::from_ggml_type(info.ggml_type.0)
        .ok_or_else(|| err(format!("ggml type {} is not supported", info.ggml_type.0)))?;
    let range = file.tensor_range(info)?;
    let storage = Storage::mapped(file.mmap().clone(), range.start, range.end - range.start)
        .map_err(|e| err(e.to_string()))?;
    let m = QMat::from_storage(dtype, 1, n, storage, None).map_err(|e| err(e.to_string()))?;
    Ok(Some(m.to_f32().data))
}

/// That GGUF tensor `g` (holding `name`) has the row-major `shape`.
fn check_shape(
    info: &crate::gguf::GgufTensorInfo,
    name: &str,
    g: &str,
    shape: &[usize],
) -> Result<(), ModelError> {
    let found: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
    if found != shape {
        return Err(ModelError::Shape {
            name: format!("{name} (GGUF `{g}`)"),
            expected: shape.to_vec(),
            found,
        });
    }
    Ok(())
}

struct GgufSource<'a> {
    g: &'a GgufModel,
    quant: Option<DType>,
    placement: Placement,
}

impl GgufSource<'_> {
    /// Where tensor `name` is stored (the name table, in this file's family).
    fn gguf_target(&self, name: &str) -> Option<GgufTarget> {
        hf_name_to_gguf(Family::of_arch(&self.g.arch), name)
    }

    fn target(&self, name: &str) -> Result<GgufTarget, ModelError> {
        self.gguf_target(name)
            .ok_or_else(|| ModelError::MissingTensor(format!("{name} (no GGUF name)")))
    }

    /// The head count of a tensor whose rows this file stores RoPE-permuted, if it does.
    fn permuted_heads(&self, gguf_name: &str) -> Option<usize> {
        let c = &self.g.config;
        rope_permuted(&self.g.arch, gguf_name).and_then(|h| match h {
            RopeHeads::Query => Some(c.num_attention_heads),
            RopeHeads::KeyValue => c.gqa().map(|g| g.num_key_value_heads),
        })
    }

    /// `m` with its rows put back in HF order when the file permuted them (a copy; quantized
    /// rows move as whole blocks).
    fn unpermute(&self, gguf_name: &str, hf_name: &str, m: QMat) -> Result<QMat, ModelError> {
        let Some(heads) = self.permuted_heads(gguf_name) else {
            return Ok(m);
        };
        let err = |msg: String| ModelError::Tensor {
            name: hf_name.to_string(),
            msg: format!("{msg} (GGUF tensor `{gguf_name}`)"),
        };
        let bytes =
            unpermute_rope_rows(m.bytes(), heads, m.row_bytes()).map_err(|e| err(e.to_string()))?;
        QMat::from_storage(m.dtype, m.rows, m.cols, Storage::Owned(bytes), None)
            .map_err(|e| err(e.to_string()))
    }
}

impl WeightSource for GgufSource<'_> {
    fn placement(&self) -> Placement {
        self.placement
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => {
                return Err(ModelError::Tensor {
                    name: name.into(),
                    msg: format!("unexpected shape {shape:?}"),
                })
            }
        };
        let m = match self.target(name)? {
            GgufTarget::Whole(g) if shape.len() == 1 => {
                // Vectors are stored 1-D: read as one row.
                let info = self
                    .g
                    .file
                    .tensor(&g)
                    .ok_or_else(|| ModelError::MissingTensor(format!("{name} (GGUF `{g}`)")))?;
                check_shape(info, name, &g, shape)?;
                let dtype =
                    DType::from_ggml_type(info.ggml_type.0).ok_or_else(|| ModelError::Tensor {
                        name: name.into(),
                        msg: format!("ggml type {} is not supported", info.ggml_type.0),
                    })?;
                let range = self
                    .g
                    .file
                    .tensor_range(info)
                    .map_err(|e| ModelError::Tensor {
                        name: name.into(),
                        msg: e.to_string(),
                    })?;
                let storage = Storage::mapped(
                    self.g.file.mmap().clone(),
                    range.start,
                    range.end - range.start,
                )
                .map_err(|e| ModelError::Tensor {
                    name: name.into(),
                    msg: e.to_string(),
                })?;
                let v = QMat::from_storage(dtype, 1, cols, storage, None)
                    .map_err(|e| ModelError::Tensor {
                        name: name.into(),
                        msg: e.to_string(),
                    })?
                    .to_f32()
                    .data;
                // A permuted bias: its elements are the "rows".
                return match self.permuted_heads(&g) {
                    None => Ok(v),
                    Some(heads) => {
                        unpermute_rope_rows(&v, heads, 1).map_err(|e| ModelError::Tensor {
                            name: format!("{name} (GGUF `{g}`)"),
                            msg: e.to_string(),
                        })
                    }
                };
            }
            _ => self.matrix(name, rows, cols)?,
        };
        Ok(m.to_f32().data)
    }

    fn contains(&self, name: &str) -> bool {
        match self.gguf_target(name) {
            Some(GgufTarget::Whole(g)) | Some(GgufTarget::Expert { name: g, .. }) => {
                self.g.file.tensor(&g).is_some()
            }
            Some(GgufTarget::KvB { fused, k_b, .. }) => {
                self.g.file.tensor(&fused).is_some() || self.g.file.tensor(&k_b).is_some()
            }
            None => false,
        }
    }

    fn kv_b_split(
        &mut self,
        layer: usize,
        cfg: &Config,
    ) -> Result<Option<(QMat, QMat)>, ModelError> {
        let name = format!("model.layers.{layer}.self_attn.kv_b_proj.weight");
        let Some(GgufTarget::KvB { fused, k_b, v_b }) = self.gguf_target(&name) else {
            return Ok(None);
        };
        let f = &self.g.file;
        let Some(m) = cfg.mla() else {
            return Ok(None);
        };
        if f.tensor(&fused).is_some() || f.tensor(&k_b).is_none() || f.tensor(&v_b).is_none() {
            return Ok(None);
        }
        let h = cfg.num_attention_heads;
        let (r, dn) = (m.kv_lora_rank, m.qk_nope_head_dim);
        let uk_t = self.g.matrix_at(&k_b, None, &name, m.uk_t_rows(h)?, dn)?;
        let uv = self.g.matrix_at(&v_b, None, &name, cfg.o_cols()?, r)?;
        Ok(Some((
            requantize(uk_t, &name, self.quant)?,
            requantize(uv, &name, self.quant)?,
        )))
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        let m = match self.target(name)? {
            GgufTarget::Whole(g) => {
                let m = self.g.matrix_at(&g, None, name, rows, cols)?;
                self.unpermute(&g, name, m)?
            }
            GgufTarget::Expert { name: g, expert } => {
                self.g.matrix_at(&g, Some(expert), name, rows, cols)?
            }
            GgufTarget::KvB { fused, k_b, v_b } => {
                if self.g.file.tensor(&fused).is_some() {
                    self.g.matrix_at(&fused, None, name, rows, cols)?
                } else {
                    // Split form: k_b [H, r, dn] (W_UK transposed per head), v_b [H, dv, r].
                    let c = &self.g.config;
                    let mla = c.mla().ok_or_else(|| ModelError::Tensor {
                        name: name.into(),
                        msg: "MLA tensor in a model without MLA".into(),
                    })?;
                    let d = KvBDims::of(c.num_attention_heads, mla);
                    let (uk_rows, uv_rows) = (mla.uk_t_rows(d.n_heads)?, c.o_cols()?);
                    let kb = self
                        .g
                        .matrix_at(&k_b, None, name, uk_rows, d.qk_nope_head_dim)
                        .map(|m| m.to_f32())?;
                    let vb = self
                        .g
                        .matrix_at(&v_b, None, name, uv_rows, d.kv_lora_rank)
                        .map(|m| m.to_f32())?;
                    let data =
                        kv_b_from_split(&kb.data, &vb.data, d).map_err(|e| ModelError::Tensor {
                            name: name.into(),
                            msg: e.to_string(),
                        })?;
                    let m = Mat { rows, cols, data };
                    QMat::from_mat(DType::F32, &m).map_err(|e| ModelError::Tensor {
                        name: name.into(),
                        msg: e.to_string(),
                    })?
                }
            }
        };
        requantize(m, name, self.quant)
    }

    /// DeepSeek-V4's stacked experts: one expert's projection from llama.cpp's
    /// `ffn_{gate,up,down}_exps` (`[experts, out, in]`, e.g. MXFP4 as its converter writes them).
    fn matrix_rows(
        &mut self,
        name: &str,
        shape: &[usize],
        first: usize,
        rows: usize,
    ) -> Result<QMat, ModelError> {
        let Some(e) = v4_expert_rows(name, shape, first, rows) else {
            return Err(ModelError::MissingTensor(format!("{name} (no GGUF name)")));
        };
        let e = e?;
        let expert = HfName::StackedExperts {
            layer: e.layer,
            proj: e.proj,
        }
        .expert_name(e.expert);
        let Some(GgufTarget::Expert { name: g, expert }) =
            expert.and_then(|n| self.gguf_target(&n))
        else {
            return Err(ModelError::MissingTensor(format!("{name} (no GGUF name)")));
        };
        let m = self.g.matrix_at(&g, Some(expert), name, e.rows, e.cols)?;
        requantize(m, name, self.quant)
    }

    /// An integer tensor (DeepSeek-V4's `tid2eid`, which llama.cpp's converter stores as I32).
    fn load_ints(&mut self, name: &str, shape: &[usize]) -> Result<Vec<i64>, ModelError> {
        let g = match self.target(name)? {
            GgufTarget::Whole(g) => g,
            _ => return Err(ModelError::MissingTensor(format!("{name} (no GGUF name)"))),
        };
        let err = |msg: String| ModelError::Tensor {
            name: format!("{name} (GGUF `{g}`)"),
            msg,
        };
        let (info, bytes) = self
            .g
            .file
            .tensor_data(&g)
            .map_err(|e| err(e.to_string()))?;
        check_shape(info, name, &g, shape)?;
        match info.ggml_type.0 {
            26 => Ok(bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect()),
            27 => Ok(bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()),
            t => Err(err(format!(
                "expected an I32 or I64 tensor, found ggml type {t}"
            ))),
        }
    }
}
