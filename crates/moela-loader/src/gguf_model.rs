//! A `deepseek2` GGUF file as a model: config from its metadata, weights mapped without
//! copying (quantized blocks stay quantized), tokenizer rebuilt from `tokenizer.ggml.*`.

use std::path::{Path, PathBuf};

use moela_kernels::{DType, Mat, QMat, Storage};
use moela_model::{Config, Model, ModelError, WeightSource};

use crate::error::LoadError;
use crate::gguf::{
    deepseek2_config_json, hf_name_to_gguf, kv_b_from_split, tokenizer_json_from_gguf, GgufFile,
    GgufTarget, KvBDims,
};
use crate::progress::LoadProgress;
use crate::safetensors_dir::{requantize, LoadOptions};

/// An opened `deepseek2` GGUF file.
pub struct GgufModel {
    pub path: PathBuf,
    pub file: GgufFile,
    pub config: Config,
    pub config_json: serde_json::Value,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<GgufModel, LoadError> {
        let file = GgufFile::open(path)?;
        let arch = file.architecture()?;
        if arch != "deepseek2" {
            return Err(LoadError::file(
                path,
                format!("GGUF architecture {arch:?} is not supported (expected deepseek2)"),
            ));
        }
        let config_json = deepseek2_config_json(&file)?;
        let config = Config::from_hf_value(&config_json).map_err(|source| LoadError::Model {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(GgufModel {
            path: path.to_path_buf(),
            file,
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
        };
        let mut bar = LoadProgress::new(opts.progress);
        Model::load(self.config.clone(), &mut src, &mut |d, t| bar.update(d, t)).map_err(|source| {
            LoadError::Model {
                path: self.path.clone(),
                source,
            }
        })
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

struct GgufSource<'a> {
    g: &'a GgufModel,
    quant: Option<DType>,
}

impl GgufSource<'_> {
    fn target(name: &str) -> Result<GgufTarget, ModelError> {
        hf_name_to_gguf(name)
            .ok_or_else(|| ModelError::MissingTensor(format!("{name} (no GGUF name)")))
    }
}

impl WeightSource for GgufSource<'_> {
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
        let m = match Self::target(name)? {
            GgufTarget::Whole(g) if shape.len() == 1 => {
                // Vectors are stored 1-D: read as one row.
                let info = self
                    .g
                    .file
                    .tensor(&g)
                    .ok_or_else(|| ModelError::MissingTensor(format!("{name} (GGUF `{g}`)")))?;
                let found: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
                if found != shape {
                    return Err(ModelError::Shape {
                        name: format!("{name} (GGUF `{g}`)"),
                        expected: shape.to_vec(),
                        found,
                    });
                }
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
                QMat::from_storage(dtype, 1, cols, storage, None).map_err(|e| {
                    ModelError::Tensor {
                        name: name.into(),
                        msg: e.to_string(),
                    }
                })?
            }
            _ => self.matrix(name, rows, cols)?,
        };
        Ok(m.to_f32().data)
    }

    fn contains(&self, name: &str) -> bool {
        match hf_name_to_gguf(name) {
            Some(GgufTarget::Whole(g)) | Some(GgufTarget::Expert { name: g, .. }) => {
                self.g.file.tensor(&g).is_some()
            }
            Some(GgufTarget::KvB { fused, k_b, .. }) => {
                self.g.file.tensor(&fused).is_some() || self.g.file.tensor(&k_b).is_some()
            }
            None => false,
        }
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        let m = match Self::target(name)? {
            GgufTarget::Whole(g) => self.g.matrix_at(&g, None, name, rows, cols)?,
            GgufTarget::Expert { name: g, expert } => {
                self.g.matrix_at(&g, Some(expert), name, rows, cols)?
            }
            GgufTarget::KvB { fused, k_b, v_b } => {
                if self.g.file.tensor(&fused).is_some() {
                    self.g.matrix_at(&fused, None, name, rows, cols)?
                } else {
                    // Split form: k_b [H, r, dn] (W_UK transposed per head), v_b [H, dv, r].
                    let c = &self.g.config;
                    let d = KvBDims {
                        n_heads: c.num_attention_heads,
                        kv_lora_rank: c.kv_lora_rank,
                        qk_nope_head_dim: c.qk_nope_head_dim,
                        v_head_dim: c.v_head_dim,
                    };
                    let h = d.n_heads;
                    let kb = self
                        .g
                        .matrix_at(&k_b, None, name, h * d.kv_lora_rank, d.qk_nope_head_dim)
                        .map(|m| m.to_f32())?;
                    let vb = self
                        .g
                        .matrix_at(&v_b, None, name, h * d.v_head_dim, d.kv_lora_rank)
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
}
