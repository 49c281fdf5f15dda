//! Per-layer weight structs and how they are requested from a [`WeightSource`].
//!
//! Tensors are requested by their Hugging Face checkpoint names; a loader maps other
//! formats' names onto these (the loader holds the one name table). DeepSeek-V4's weights
//! (transformers' names) are requested in `v4/load.rs`.

use std::sync::Arc;

use moela_kernels::{DType, Mat, Placement, QMat};

use crate::config::{Attention, Config, GqaConfig, MlaConfig, MoeConfig};
use crate::error::ModelError;
use crate::experts::{Experts, ResidentSet};
use crate::gqa::GqaDims;
use crate::indexer::IndexerDims;
use crate::mla::MlaDims;
use crate::v4::{HyperHead, LayerHyper, V4Attention};

/// HF checkpoint tensor names, spelled once: the loader requests them and the exporter
/// (`Weights::named_tensors`) writes them.
mod hf {
    pub const EMBED: &str = "model.embed_tokens.weight";
    pub const NORM: &str = "model.norm.weight";
    pub const LM_HEAD: &str = "lm_head.weight";
    pub const Q_PROJ: &str = "self_attn.q_proj.weight";
    pub const Q_A_PROJ: &str = "self_attn.q_a_proj.weight";
    pub const Q_A_NORM: &str = "self_attn.q_a_layernorm.weight";
    pub const Q_B_PROJ: &str = "self_attn.q_b_proj.weight";
    pub const KV_A_PROJ: &str = "self_attn.kv_a_proj_with_mqa.weight";
    pub const KV_A_NORM: &str = "self_attn.kv_a_layernorm.weight";
    pub const KV_B_PROJ: &str = "self_attn.kv_b_proj.weight";
    pub const O_PROJ: &str = "self_attn.o_proj.weight";
    pub const INDEX_WQ_B: &str = "self_attn.indexer.wq_b.weight";
    pub const INDEX_WK: &str = "self_attn.indexer.wk.weight";
    pub const INDEX_K_NORM: &str = "self_attn.indexer.k_norm.weight";
    pub const INDEX_K_NORM_BIAS: &str = "self_attn.indexer.k_norm.bias";
    pub const INDEX_WEIGHTS_PROJ: &str = "self_attn.indexer.weights_proj.weight";
    pub const ATTN_NORM: &str = "input_layernorm.weight";
    pub const FFN_NORM: &str = "post_attention_layernorm.weight";
    pub const MLP: &str = "mlp";
    pub const ROUTER: &str = "mlp.gate.weight";
    pub const ROUTER_BIAS: &str = "mlp.gate.e_score_correction_bias";
    pub const SHARED_EXPERTS: &str = "mlp.shared_experts";
    pub const GATE_PROJ: &str = "gate_proj.weight";
    pub const UP_PROJ: &str = "up_proj.weight";
    pub const DOWN_PROJ: &str = "down_proj.weight";
    pub const MTP_ENORM: &str = "enorm.weight";
    pub const MTP_HNORM: &str = "hnorm.weight";
    pub const MTP_EH_PROJ: &str = "eh_proj.weight";
    pub const MTP_HEAD_NORM: &str = "shared_head.norm.weight";
    /// DeepSeek-V4's MTP layer: its two projections and its own stream collapse (`hc_head.*`).
    pub const MTP_E_PROJ: &str = "e_proj.weight";
    pub const MTP_H_PROJ: &str = "h_proj.weight";
    pub const MTP_HC_HEAD: &str = "hc_head";

    /// Decoder layer `l`: `model.layers.{l}`.
    pub fn layer(l: usize) -> String {
        format!("model.layers.{l}")
    }

    /// `{prefix}.{name}`.
    pub fn at(prefix: &str, name: &str) -> String {
        format!("{prefix}.{name}")
    }

    /// Routed expert `e` of the layer at `layer`: `{layer}.mlp.experts.{e}`.
    pub fn expert(layer: &str, e: usize) -> String {
        format!("{layer}.mlp.experts.{e}")
    }

    /// A GQA projection's weight or bias: `{layer}.self_attn.{q|k|v|o}_proj.{part}`.
    pub fn attn_proj(layer: &str, proj: &str, part: &str) -> String {
        format!("{layer}.self_attn.{proj}_proj.{part}")
    }
}

/// Where weights come from. The model never reads files; a loader implements this.
pub trait WeightSource {
    /// Tensor `name` converted to f32, after checking that its shape is `shape` (outermost first).
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// Whether tensor `name` is present.
    fn contains(&self, name: &str) -> bool;
    /// Matrix `name` of shape `[rows, cols]` in whatever type it is best kept (loaders keep
    /// stored types as they are, without copying). The default converts [`Self::load`] to F32.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        let data = self.load(name, &[rows, cols])?;
        QMat::from_f32(DType::F32, rows, cols, &data).map_err(|e| ModelError::Tensor {
            name: name.to_string(),
            msg: e.to_string(),
        })
    }
    /// How the matrices this source hands over are placed for the kernels (the loader's
    /// decision, from its options: packed copies in RAM, or read in place from the mapping).
    fn placement(&self) -> Placement {
        Placement::default()
    }
    /// `kv_b_proj` of MLA layer `layer` as stored split for the absorbed form, when the
    /// source has it that way (llama.cpp's `attn_k_b`/`attn_v_b`): W_UK transposed per head
    /// `[heads·kv_lora_rank, qk_nope]` and W_UV `[heads·v_head, kv_lora_rank]`, in their stored
    /// types. `None` (the default) derives both from `kv_b_proj`.
    fn kv_b_split(
        &mut self,
        layer: usize,
        cfg: &Config,
    ) -> Result<Option<(QMat, QMat)>, ModelError> {
        let _ = (layer, cfg);
        Ok(None)
    }
    /// Rows `first..first + rows` of tensor `name`, stored with `shape` (outermost first) and
    /// read as the matrix `[shape[..-1].product(), shape[-1]]`: one expert of transformers'
    /// stacked `[experts, out, in]` tensors, one group of a grouped projection. Loaders map the
    /// stored rows in their type; the default converts [`Self::load`] to F32.
    fn matrix_rows(
        &mut self,
        name: &str,
        shape: &[usize],
        first: usize,
        rows: usize,
    ) -> Result<QMat, ModelError> {
        let cols = shape.last().copied().unwrap_or(1);
        let all = self.load(name, shape)?;
        let err = |msg: String| ModelError::Tensor {
            name: name.to_string(),
            msg,
        };
        let range = first
            .checked_add(rows)
            .and_then(|end| Some(first.checked_mul(cols)?..end.checked_mul(cols)?))
            .filter(|r| r.end <= all.len())
            .ok_or_else(|| err(format!("rows {first}+{rows} are outside {shape:?}")))?;
        QMat::from_f32(DType::F32, rows, cols, &all[range]).map_err(|e| err(e.to_string()))
    }
    /// Integer tensor `name` of shape `shape` (stored I64 or I32), e.g. DeepSeek-V4's
    /// `tid2eid`. The default: this source holds none.
    fn load_ints(&mut self, name: &str, shape: &[usize]) -> Result<Vec<i64>, ModelError> {
        let _ = shape;
        Err(ModelError::Tensor {
            name: name.to_string(),
            msg: "integer tensors are not supported by this checkpoint format".into(),
        })
    }
}

/// A SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: QMat, // [width, hidden]
    pub up: QMat,   // [width, hidden]
    pub down: QMat, // [hidden, width]
    /// DeepSeek-V4's clamp of the SwiGLU inputs: gate ≤ L, |up| ≤ L.
    pub swiglu_limit: Option<f32>,
}

/// Query projection: direct (V2-Lite) or low-rank with a norm in between.
#[derive(Clone, Debug)]
pub enum QProj {
    Direct(QMat), // [heads·qk_head_dim, hidden]
    LowRank {
        a: QMat,        // [q_lora_rank, hidden]
        norm: Vec<f32>, // [q_lora_rank]
        b: QMat,        // [heads·qk_head_dim, q_lora_rank]
    },
}

/// Multi-head latent attention weights (DeepSeek).
#[derive(Clone, Debug)]
pub struct MlaAttention {
    pub q: QProj,
    /// `[kv_lora_rank + qk_rope_head_dim, hidden]`: rows 0..r give the latent, the rest the rope key.
    pub kv_a: QMat,
    pub kv_a_norm: Vec<f32>, // [kv_lora_rank]
    /// `[heads·(qk_nope + v_head), kv_lora_rank]`: per head, W_UK rows then W_UV rows, for
    /// the decompressing form (the executable spec): F32, or Q8_0 in a quantized model.
    pub kv_b: QMat,
    /// The absorbed form's view of `kv_b`: W_UK transposed per head
    /// `[heads·kv_lora_rank, qk_nope]` and W_UV `[heads·v_head, kv_lora_rank]`, in the stored
    /// type (from the file's split tensors, or transposed from a float `kv_b`; FP8 becomes F32
    /// and fused quantized `kv_b` Q8_0).
    pub uk_t: QMat,
    pub uv: QMat,
    pub o: QMat, // [hidden, heads·v_head]
    /// DeepSeek-V3.2's key selector; `None`: dense attention.
    pub indexer: Option<Box<Indexer>>,
    /// The sizes and softmax scale, fixed at load.
    pub dims: MlaDims,
}

/// DeepSeek-V3.2's lightning indexer of one layer (`self_attn.indexer.*`): its query comes
/// from the MLA's normalized q-LoRA latent, its one key per token from the layer's input.
#[derive(Clone, Debug)]
pub struct Indexer {
    pub wq_b: QMat,            // [index_heads·index_dim, q_lora_rank]
    pub wk: QMat,              // [index_dim, hidden]
    pub k_norm: Vec<f32>,      // [index_dim] LayerNorm weight
    pub k_norm_bias: Vec<f32>, // [index_dim] LayerNorm bias
    pub weights_proj: QMat,    // [index_heads, hidden], F32 as the reference computes it
    /// The sizes, selection size and the key's columns in the cached row, fixed at load.
    pub dims: IndexerDims,
}

/// Routed experts with their router and optional shared experts.
#[derive(Clone, Debug)]
pub struct Moe {
    /// How tokens are routed.
    pub config: MoeConfig,
    pub router: QMat, // [n_routed_experts, hidden], F32 as the reference computes it
    pub bias: Option<Vec<f32>>, // [n_routed_experts] e_score_correction_bias (noaux_tc)
    pub experts: Experts, // n_routed_experts × width moe_intermediate_size
    pub shared: Option<Mlp>, // width moe_intermediate_size · n_shared_experts
    /// DeepSeek-V4's hash routing: the experts of token `t` are
    /// `hash[t·k..(t + 1)·k]` (`tid2eid`, `[vocab, num_experts_per_tok]`), not the router's
    /// choice; the router's scores still weight them.
    pub hash: Option<Vec<u32>>,
}

#[derive(Clone, Debug)]
// One per layer: the size difference of the variants costs nothing worth an indirection.
#[allow(clippy::large_enum_variant)]
pub enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// Grouped-query attention weights (Qwen2, Llama): `heads` query heads share
/// `kv_heads` key/value heads, `head_dim` wide each.
#[derive(Clone, Debug)]
pub struct GqaAttention {
    pub q: QMat,                  // [heads·head_dim, hidden]
    pub k: QMat,                  // [kv_heads·head_dim, hidden]
    pub v: QMat,                  // [kv_heads·head_dim, hidden]
    pub o: QMat,                  // [hidden, heads·head_dim]
    pub q_bias: Option<Vec<f32>>, // [heads·head_dim]
    pub k_bias: Option<Vec<f32>>, // [kv_heads·head_dim]
    pub v_bias: Option<Vec<f32>>, // [kv_heads·head_dim]
    pub o_bias: Option<Vec<f32>>, // [hidden]
    /// The sizes, softmax scale and this layer's window, fixed at load.
    pub(crate) dims: GqaDims,
}

/// A layer's attention: the one part in which the architecture families differ.
#[derive(Clone, Debug)]
pub enum LayerAttention {
    Mla(MlaAttention),
    Gqa(GqaAttention),
    V4(Box<V4Attention>),
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>, // [hidden]
    pub attn: LayerAttention,
    pub ffn_norm: Vec<f32>, // [hidden]
    pub ffn: Ffn,
    /// DeepSeek-V4's hyper-connections around the attention and the FFN; `None`: one residual
    /// stream, `h += sublayer(norm(h))`.
    pub hyper: Option<Box<LayerHyper>>,
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct Weights {
    pub embed: QMat, // [vocab, hidden]
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,        // [hidden]
    pub lm_head: Option<QMat>, // [vocab, hidden]; None when tied to `embed`
    /// DeepSeek-V4's collapse of the residual streams before the final norm.
    pub hc_head: Option<HyperHead>,
    /// DeepSeek's first Multi-Token Prediction layer, when the checkpoint has its weights.
    pub mtp: Option<Box<crate::mtp::MtpLayer>>,
    /// Which routed experts have resident copies, when placed `Resident` (memory short).
    pub resident: Option<Arc<ResidentSet>>,
}

struct Req<'a> {
    src: &'a mut dyn WeightSource,
    resident: Option<Arc<ResidentSet>>,
}

impl Req<'_> {
    /// Decoder layer `l` (`model.layers.{l}`): its attention, FFN and norms.
    fn layer(&mut self, cfg: &Config, l: usize) -> Result<Layer, ModelError> {
        let d = cfg.hidden_size;
        let p = &hf::layer(l);
        let (attn, hyper) = match &cfg.attention {
            Attention::Mla(m) => (LayerAttention::Mla(self.mla(cfg, m, l, p)?), None),
            Attention::Gqa(g) => (LayerAttention::Gqa(self.gqa(cfg, g, l, p)?), None),
            Attention::V4(v) => (
                LayerAttention::V4(Box::new(crate::v4::load_attention(self.src, cfg, v, l, p)?)),
                Some(Box::new(crate::v4::load_hyper(self.src, cfg, v, p)?)),
            ),
        };
        let ffn = match (&cfg.moe, &cfg.attention) {
            (Some(m), Attention::V4(v)) => Ffn::Moe(crate::v4::load_moe(
                self.src,
                cfg,
                m,
                v,
                l,
                p,
                self.resident.as_ref(),
            )?),
            (Some(m), _) if cfg.is_moe_layer(l) => Ffn::Moe(self.moe(cfg, m, p)?),
            _ => Ffn::Dense(self.mlp(&hf::at(p, hf::MLP), d, cfg.intermediate_size)?),
        };
        Ok(Layer {
            attn_norm: self.vec(&hf::at(p, hf::ATTN_NORM), d)?,
            attn,
            ffn_norm: self.vec(&hf::at(p, hf::FFN_NORM), d)?,
            ffn,
            hyper,
        })
    }

    /// DeepSeek's first MTP layer (`model.layers.{num_hidden_layers}`: `enorm`, `hnorm`,
    /// `eh_proj` (V4: `e_proj`, `h_proj`), a decoder block, `shared_head.norm` (V4: and its own
    /// `hc_head`); its head and embedding are the model's), for MLA and V4 models whose config
    /// declares one and whose checkpoint has its weights.
    fn mtp(&mut self, cfg: &Config) -> Result<Option<crate::mtp::MtpLayer>, ModelError> {
        let n = cfg.num_hidden_layers;
        let p = &hf::layer(n);
        let d = cfg.hidden_size;
        let proj = match &cfg.attention {
            _ if cfg.num_nextn_predict_layers == 0 => return Ok(None),
            Attention::Mla(_) if self.src.contains(&hf::at(p, hf::MTP_EH_PROJ)) => {
                let two_d = d.checked_mul(2).ok_or_else(|| ModelError::Config {
                    field: "hidden_size".into(),
                    msg: format!("{d} is too large"),
                })?;
                crate::mtp::MtpProj::Fused(self.mat(&hf::at(p, hf::MTP_EH_PROJ), d, two_d)?)
            }
            Attention::V4(_) if self.src.contains(&hf::at(p, hf::MTP_E_PROJ)) => {
                crate::mtp::MtpProj::Split {
                    e: self.mat(&hf::at(p, hf::MTP_E_PROJ), d, d)?,
                    h: self.mat(&hf::at(p, hf::MTP_H_PROJ), d, d)?,
                }
            }
            _ => return Ok(None),
        };
        let hc_head = match cfg.v4() {
            Some(v) => Some(crate::v4::load_head(
                self.src,
                cfg,
                v,
                &hf::at(p, hf::MTP_HC_HEAD),
            )?),
            None => None,
        };
        Ok(Some(crate::mtp::MtpLayer {
            enorm: self.vec(&hf::at(p, hf::MTP_ENORM), d)?,
            hnorm: self.vec(&hf::at(p, hf::MTP_HNORM), d)?,
            proj,
            block: self.layer(cfg, n)?,
            norm: self.vec(&hf::at(p, hf::MTP_HEAD_NORM), d)?,
            hc_head,
        }))
    }

    fn vec(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        self.src.load(name, &[len])
    }
    /// A matrix as stored, shape-checked.
    fn stored_mat(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        let m = self.src.matrix(name, rows, cols)?;
        if (m.rows, m.cols) != (rows, cols) {
            return Err(ModelError::Shape {
                name: name.to_string(),
                expected: vec![rows, cols],
                found: vec![m.rows, m.cols],
            });
        }
        Ok(m)
    }
    /// A matrix for the matmul kernels, placed as the source asks ([`Placement`]).
    fn mat(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        let p = self.src.placement();
        self.stored_mat(name, rows, cols).map(|m| m.place(p))
    }
    /// A matrix that must be computed in f32 (the router, as the reference does).
    fn f32_mat(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMat, ModelError> {
        let m = self.stored_mat(name, rows, cols)?;
        if m.dtype == DType::F32 {
            return Ok(m);
        }
        QMat::from_f32(DType::F32, rows, cols, &m.to_f32().data).map_err(|e| ModelError::Tensor {
            name: name.to_string(),
            msg: e.to_string(),
        })
    }
    /// An optional bias: present when the config says so (then required).
    fn bias(&mut self, on: bool, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if on {
            self.vec(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
    /// W_UK transposed per head and W_UV (see [`MlaAttention::uk_t`]) from the source's split
    /// tensors, or from `kv_b` (`[heads·(nope + v), rank]`, stored as `dtype`).
    fn absorbed(
        &mut self,
        cfg: &Config,
        m: &MlaConfig,
        dims: &MlaDims,
        layer: usize,
        kv_b: &Mat,
        dtype: DType,
    ) -> Result<(QMat, QMat), ModelError> {
        if let Some((uk_t, uv)) = self.src.kv_b_split(layer, cfg)? {
            let p = self.src.placement();
            return Ok((uk_t.place(p), uv.place(p)));
        }
        let (h, r, dn, dv) = (dims.heads, dims.rank, dims.nope, dims.v);
        // Rows of W_UK transposed and of W_UV, checked (and their elements, by validate).
        let (uk_rows, uv_rows) = (m.uk_t_rows(h)?, cfg.o_cols()?);
        let mut uk_t = vec![0.0f32; uk_rows * dn];
        let mut uv = Vec::with_capacity(uv_rows * r);
        for hh in 0..h {
            let base = hh * (dn + dv);
            for i in 0..dn {
                for (j, &w) in kv_b.row(base + i).iter().enumerate() {
                    uk_t[(hh * r + j) * dn + i] = w;
                }
            }
            for i in 0..dv {
                uv.extend_from_slice(kv_b.row(base + dn + i));
            }
        }
        // Transposing is exact in a float type; FP8 block scales and quantized blocks do not
        // survive it, so those become F32 and Q8_0.
        let dt = match dtype {
            DType::F32 | DType::F16 | DType::BF16 => dtype,
            DType::F8E4M3Block128 => DType::F32,
            _ => DType::Q8_0,
        };
        let name = hf::at(&hf::layer(layer), hf::KV_B_PROJ);
        let q = |rows: usize, cols: usize, data: &[f32]| {
            // Built here in RAM, never mapped: the fastest layout costs nothing.
            QMat::from_f32(dt, rows, cols, data)
                .map(|m| m.place(Placement::Fastest))
                .map_err(|e| ModelError::Tensor {
                    name: name.clone(),
                    msg: e.to_string(),
                })
        };
        Ok((q(uk_rows, dn, &uk_t)?, q(uv_rows, r, &uv)?))
    }
    /// The indexer of the layer at `p`, when the config has one.
    fn indexer(
        &mut self,
        cfg: &Config,
        m: &MlaConfig,
        p: &str,
    ) -> Result<Option<Box<Indexer>>, ModelError> {
        let (Some(ix), Some(rq)) = (&m.indexer, m.q_lora_rank) else {
            return Ok(None);
        };
        let (d, w) = (cfg.hidden_size, ix.index_head_dim);
        // weights_proj runs in f32 on the f32 input (the reference keeps it in float32): read
        // as f32 values, never requantized.
        let name = hf::at(p, hf::INDEX_WEIGHTS_PROJ);
        let proj = self.src.load(&name, &[ix.index_n_heads, d])?;
        let weights_proj = QMat::from_f32(DType::F32, ix.index_n_heads, d, &proj).map_err(|e| {
            ModelError::Tensor {
                name,
                msg: e.to_string(),
            }
        })?;
        Ok(Some(Box::new(Indexer {
            wq_b: self.mat(&hf::at(p, hf::INDEX_WQ_B), ix.q_rows()?, rq)?,
            wk: self.mat(&hf::at(p, hf::INDEX_WK), w, d)?,
            k_norm: self.vec(&hf::at(p, hf::INDEX_K_NORM), w)?,
            k_norm_bias: self.vec(&hf::at(p, hf::INDEX_K_NORM_BIAS), w)?,
            weights_proj,
            dims: IndexerDims::new(m, ix)?,
        })))
    }
    /// MLA weights of layer `layer` at `p` (`model.layers.{layer}`).
    fn mla(
        &mut self,
        cfg: &Config,
        m: &MlaConfig,
        layer: usize,
        p: &str,
    ) -> Result<MlaAttention, ModelError> {
        let d = cfg.hidden_size;
        let dims = MlaDims::new(cfg, m)?;
        let q_rows = cfg.q_rows()?;
        let q = match m.q_lora_rank {
            None => QProj::Direct(self.mat(&hf::at(p, hf::Q_PROJ), q_rows, d)?),
            Some(rq) => QProj::LowRank {
                a: self.mat(&hf::at(p, hf::Q_A_PROJ), rq, d)?,
                norm: self.vec(&hf::at(p, hf::Q_A_NORM), rq)?,
                b: self.mat(&hf::at(p, hf::Q_B_PROJ), q_rows, rq)?,
            },
        };
        let kv_b_rows = m.kv_b_rows(dims.heads)?;
        let kv_b_q = self.stored_mat(&hf::at(p, hf::KV_B_PROJ), kv_b_rows, dims.rank)?;
        let kv_b = kv_b_q.to_f32();
        let (uk_t, uv) = self.absorbed(cfg, m, &dims, layer, &kv_b, kv_b_q.dtype)?;
        // The decompressing form runs in f32 for float checkpoints (the executable spec); a
        // quantized model's (whose absorbed weights are quantized) gets Q8_0, which keeps
        // long prefills compute-cheap.
        let kv_b = if uk_t.dtype.is_quantized() {
            QMat::from_mat(DType::Q8_0, &kv_b)
        } else {
            QMat::from_mat(DType::F32, &kv_b)
        }
        .map(|m| m.place(Placement::Fastest))
        .map_err(|e| ModelError::Tensor {
            name: hf::at(p, hf::KV_B_PROJ),
            msg: e.to_string(),
        })?;
        Ok(MlaAttention {
            q,
            kv_a: self.mat(&hf::at(p, hf::KV_A_PROJ), m.latent_dim()?, d)?,
            kv_a_norm: self.vec(&hf::at(p, hf::KV_A_NORM), dims.rank)?,
            kv_b,
            uk_t,
            uv,
            o: self.mat(&hf::at(p, hf::O_PROJ), d, cfg.o_cols()?)?,
            indexer: self.indexer(cfg, m, p)?,
            dims,
        })
    }
    /// GQA weights (and biases the config calls for) of layer `layer` at `p`.
    fn gqa(
        &mut self,
        cfg: &Config,
        g: &GqaConfig,
        layer: usize,
        p: &str,
    ) -> Result<GqaAttention, ModelError> {
        let d = cfg.hidden_size;
        let (q_rows, kv_rows) = (cfg.q_rows()?, g.kv_rows()?);
        Ok(GqaAttention {
            q: self.mat(&hf::attn_proj(p, "q", "weight"), q_rows, d)?,
            k: self.mat(&hf::attn_proj(p, "k", "weight"), kv_rows, d)?,
            v: self.mat(&hf::attn_proj(p, "v", "weight"), kv_rows, d)?,
            o: self.mat(&hf::attn_proj(p, "o", "weight"), d, cfg.o_cols()?)?,
            q_bias: self.bias(g.qkv_bias, &hf::attn_proj(p, "q", "bias"), q_rows)?,
            k_bias: self.bias(g.qkv_bias, &hf::attn_proj(p, "k", "bias"), kv_rows)?,
            v_bias: self.bias(g.qkv_bias, &hf::attn_proj(p, "v", "bias"), kv_rows)?,
            o_bias: self.bias(g.o_bias, &hf::attn_proj(p, "o", "bias"), d)?,
            dims: GqaDims::new(cfg, g, layer)?,
        })
    }
    /// Routed experts, router (and its correction bias) and shared experts of the layer at `p`.
    fn moe(&mut self, cfg: &Config, m: &MoeConfig, p: &str) -> Result<Moe, ModelError> {
        let (d, e, w) = (cfg.hidden_size, m.n_routed_experts, m.moe_intermediate_size);
        let bias_name = hf::at(p, hf::ROUTER_BIAS);
        // The correction bias belongs to noaux_tc; V3 checkpoints always carry it.
        let bias = if self.src.contains(&bias_name) || cfg.model_type.routes_like_v3() {
            Some(self.vec(&bias_name, e)?)
        } else {
            None
        };
        let place = self.src.placement().for_experts();
        let mlps = (0..e)
            .map(|i| self.mlp_placed(&hf::expert(p, i), d, w, place))
            .collect::<Result<Vec<_>, _>>()?;
        let experts = Experts::placed(mlps, self.resident.as_ref());
        let shared = match m.shared_width()? {
            0 => None,
            width => Some(self.mlp(&hf::at(p, hf::SHARED_EXPERTS), d, width)?),
        };
        Ok(Moe {
            config: m.clone(),
            router: self.f32_mat(&hf::at(p, hf::ROUTER), e, d)?,
            bias,
            experts,
            shared,
            hash: None,
        })
    }
    fn mlp(&mut self, prefix: &str, hidden: usize, width: usize) -> Result<Mlp, ModelError> {
        let p = self.src.placement();
        self.mlp_placed(prefix, hidden, width, p)
    }
    fn mlp_placed(
        &mut self,
        prefix: &str,
        hidden: usize,
        width: usize,
        p: Placement,
    ) -> Result<Mlp, ModelError> {
        let mut mat = |name: &str, rows, cols| {
            self.stored_mat(&hf::at(prefix, name), rows, cols)
                .map(|m| m.place(p))
        };
        Ok(Mlp {
            gate: mat(hf::GATE_PROJ, width, hidden)?,
            up: mat(hf::UP_PROJ, width, hidden)?,
            down: mat(hf::DOWN_PROJ, hidden, width)?,
            swiglu_limit: None,
        })
    }
}

impl Weights {
    /// Requests every tensor the config calls for; `progress(done, total)` after each layer.
    pub fn load(
        cfg: &Config,
        src: &mut dyn WeightSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Weights, ModelError> {
        let d = cfg.hidden_size;
        let resident = src.placement().expert_budget().map(ResidentSet::new);
        let mut req = Req { src, resident };
        let total = cfg.num_hidden_layers + 2;
        // A lookup table, unless tied to the head (then packed below).
        let embed = req.stored_mat(hf::EMBED, cfg.vocab_size, d)?;
        progress(1, total);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(req.layer(cfg, l)?);
            progress(l + 2, total);
        }
        let norm = req.vec(hf::NORM, d)?;
        let mtp = req.mtp(cfg)?.map(Box::new);
        let hc_head = match cfg.v4() {
            Some(v) => Some(crate::v4::load_head(req.src, cfg, v, crate::v4::HC_HEAD)?),
            None => None,
        };
        let tied = cfg.tie_word_embeddings && !req.src.contains(hf::LM_HEAD);
        let lm_head = if tied {
            None
        } else {
            Some(req.mat(hf::LM_HEAD, cfg.vocab_size, d)?)
        };
        let embed = if tied {
            embed.place(req.src.placement())
        } else {
            embed
        };
        progress(total, total);
        Ok(Weights {
            embed,
            layers,
            norm,
            lm_head,
            hc_head,
            mtp,
            resident: req.resident,
        })
    }
}

/// A weight as the model holds it, for exporters.
#[derive(Clone, Copy, Debug)]
pub enum TensorRef<'a> {
    Vector(&'a [f32]),
    Matrix(&'a QMat),
    /// f32 values that are not a matmul weight, row-major `[len / cols, cols]` (V4's compressor
    /// position biases `[ratio, width]`).
    Table {
        data: &'a [f32],
        cols: usize,
    },
    /// Expert ids, row-major `[len / cols, cols]` (V4's `tid2eid`: `[vocab, experts_per_token]`).
    Ids {
        data: &'a [u32],
        cols: usize,
    },
}

impl Weights {
    /// Every weight with its HF checkpoint name, in checkpoint order (embeddings, layers, head).
    pub fn named_tensors(&self) -> Vec<(String, TensorRef<'_>)> {
        use TensorRef::{Matrix, Vector};
        let mut v: Vec<(String, TensorRef<'_>)> = vec![(hf::EMBED.into(), Matrix(&self.embed))];
        fn mlp<'a>(v: &mut Vec<(String, TensorRef<'a>)>, p: &str, m: &'a Mlp) {
            v.push((hf::at(p, hf::GATE_PROJ), Matrix(&m.gate)));
            v.push((hf::at(p, hf::UP_PROJ), Matrix(&m.up)));
            v.push((hf::at(p, hf::DOWN_PROJ), Matrix(&m.down)));
        }
        fn mla<'a>(v: &mut Vec<(String, TensorRef<'a>)>, p: &str, a: &'a MlaAttention) {
            match &a.q {
                QProj::Direct(w) => v.push((hf::at(p, hf::Q_PROJ), Matrix(w))),
                QProj::LowRank { a: qa, norm, b } => {
                    v.push((hf::at(p, hf::Q_A_PROJ), Matrix(qa)));
                    v.push((hf::at(p, hf::Q_A_NORM), Vector(norm)));
                    v.push((hf::at(p, hf::Q_B_PROJ), Matrix(b)));
                }
            }
            v.push((hf::at(p, hf::KV_A_PROJ), Matrix(&a.kv_a)));
            v.push((hf::at(p, hf::KV_A_NORM), Vector(&a.kv_a_norm)));
            v.push((hf::at(p, hf::KV_B_PROJ), Matrix(&a.kv_b)));
            v.push((hf::at(p, hf::O_PROJ), Matrix(&a.o)));
            if let Some(ix) = &a.indexer {
                v.push((hf::at(p, hf::INDEX_WQ_B), Matrix(&ix.wq_b)));
                v.push((hf::at(p, hf::INDEX_WK), Matrix(&ix.wk)));
                v.push((hf::at(p, hf::INDEX_K_NORM), Vector(&ix.k_norm)));
                v.push((hf::at(p, hf::INDEX_K_NORM_BIAS), Vector(&ix.k_norm_bias)));
                v.push((hf::at(p, hf::INDEX_WEIGHTS_PROJ), Matrix(&ix.weights_proj)));
            }
        }
        fn gqa<'a>(v: &mut Vec<(String, TensorRef<'a>)>, p: &str, a: &'a GqaAttention) {
            let projections = [
                ("q", &a.q, &a.q_bias),
                ("k", &a.k, &a.k_bias),
                ("v", &a.v, &a.v_bias),
                ("o", &a.o, &a.o_bias),
            ];
            for (n, w, b) in projections {
                v.push((hf::attn_proj(p, n, "weight"), Matrix(w)));
                if let Some(b) = b {
                    v.push((hf::attn_proj(p, n, "bias"), Vector(b)));
                }
            }
        }
        let layers = self.layers.iter().enumerate();
        // DeepSeek-V4's MTP layer has no name in the formats the exporters write.
        let mtp = self.mtp.as_ref().and_then(|m| match &m.proj {
            crate::mtp::MtpProj::Fused(_) => Some((self.layers.len(), &m.block)),
            crate::mtp::MtpProj::Split { .. } => None,
        });
        for (l, layer) in layers.chain(mtp) {
            let p = &hf::layer(l);
            if let Some(m) = self.mtp.as_ref().filter(|_| l == self.layers.len()) {
                v.push((hf::at(p, hf::MTP_ENORM), Vector(&m.enorm)));
                v.push((hf::at(p, hf::MTP_HNORM), Vector(&m.hnorm)));
                if let crate::mtp::MtpProj::Fused(eh) = &m.proj {
                    v.push((hf::at(p, hf::MTP_EH_PROJ), Matrix(eh)));
                }
                v.push((hf::at(p, hf::MTP_HEAD_NORM), Vector(&m.norm)));
            }
            v.push((hf::at(p, hf::ATTN_NORM), Vector(&layer.attn_norm)));
            match &layer.attn {
                LayerAttention::Mla(a) => mla(&mut v, p, a),
                LayerAttention::Gqa(a) => gqa(&mut v, p, a),
                LayerAttention::V4(a) => a.named_tensors(&mut v, p),
            }
            if let Some(h) = &layer.hyper {
                h.named_tensors(&mut v, p);
            }
            v.push((hf::at(p, hf::FFN_NORM), Vector(&layer.ffn_norm)));
            match &layer.ffn {
                Ffn::Dense(m) => mlp(&mut v, &hf::at(p, hf::MLP), m),
                Ffn::Moe(m) => {
                    v.push((hf::at(p, hf::ROUTER), Matrix(&m.router)));
                    if let Some(b) = &m.bias {
                        v.push((hf::at(p, hf::ROUTER_BIAS), Vector(b)));
                    }
                    if let Some(h) = &m.hash {
                        let cols = m.config.num_experts_per_tok;
                        let ids = TensorRef::Ids { data: h, cols };
                        v.push((hf::at(p, crate::v4::TID2EID), ids));
                    }
                    for (e, ex) in m.experts.iter().enumerate() {
                        mlp(&mut v, &hf::expert(p, e), ex);
                    }
                    if let Some(s) = &m.shared {
                        mlp(&mut v, &hf::at(p, hf::SHARED_EXPERTS), s);
                    }
                }
            }
        }
        if let Some(h) = &self.hc_head {
            h.named_tensors(&mut v);
        }
        v.push((hf::NORM.into(), Vector(&self.norm)));
        if let Some(h) = &self.lm_head {
            v.push((hf::LM_HEAD.into(), Matrix(h)));
        }
        v
    }
}
