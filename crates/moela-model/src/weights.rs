//! Per-layer weight structs and how they are requested from a [`WeightSource`].
//!
//! Tensors are requested by their Hugging Face checkpoint names; a loader maps other
//! formats' names onto these (the loader holds the one name table).

use moela_kernels::Mat;

use crate::config::{Config, ModelType};
use crate::error::ModelError;

/// Where weights come from. The model never reads files; a loader implements this.
pub trait WeightSource {
    /// Tensor `name` converted to f32, after checking that its shape is `shape` (outermost first).
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// Whether tensor `name` is present.
    fn contains(&self, name: &str) -> bool;
}

/// A SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Mat, // [width, hidden]
    pub up: Mat,   // [width, hidden]
    pub down: Mat, // [hidden, width]
}

/// Query projection: direct (V2-Lite) or low-rank with a norm in between.
#[derive(Clone, Debug)]
pub enum QProj {
    Direct(Mat), // [heads·qk_head_dim, hidden]
    LowRank {
        a: Mat,         // [q_lora_rank, hidden]
        norm: Vec<f32>, // [q_lora_rank]
        b: Mat,         // [heads·qk_head_dim, q_lora_rank]
    },
}

/// Multi-head latent attention weights.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: QProj,
    /// `[kv_lora_rank + qk_rope_head_dim, hidden]`: rows 0..r give the latent, the rest the rope key.
    pub kv_a: Mat,
    pub kv_a_norm: Vec<f32>, // [kv_lora_rank]
    /// `[heads·(qk_nope + v_head), kv_lora_rank]`: per head, W_UK rows then W_UV rows.
    pub kv_b: Mat,
    pub o: Mat, // [hidden, heads·v_head]
}

/// Routed experts with their router and optional shared experts.
#[derive(Clone, Debug)]
pub struct Moe {
    pub router: Mat,            // [n_routed_experts, hidden], f32 as the reference
    pub bias: Option<Vec<f32>>, // [n_routed_experts] e_score_correction_bias (noaux_tc)
    pub experts: Vec<Mlp>,      // n_routed_experts × width moe_intermediate_size
    pub shared: Option<Mlp>,    // width moe_intermediate_size · n_shared_experts
}

#[derive(Clone, Debug)]
pub enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>, // [hidden]
    pub attn: Attention,
    pub ffn_norm: Vec<f32>, // [hidden]
    pub ffn: Ffn,
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct Weights {
    pub embed: Mat, // [vocab, hidden]
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,       // [hidden]
    pub lm_head: Option<Mat>, // [vocab, hidden]; None when tied to `embed`
}

struct Req<'a> {
    src: &'a mut dyn WeightSource,
}

impl Req<'_> {
    fn vec(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        self.src.load(name, &[len])
    }
    fn mat(&mut self, name: &str, rows: usize, cols: usize) -> Result<Mat, ModelError> {
        let data = self.src.load(name, &[rows, cols])?;
        Mat::new(rows, cols, data).ok_or_else(|| ModelError::Shape {
            name: name.to_string(),
            expected: vec![rows, cols],
            found: vec![],
        })
    }
    fn mlp(&mut self, prefix: &str, hidden: usize, width: usize) -> Result<Mlp, ModelError> {
        Ok(Mlp {
            gate: self.mat(&format!("{prefix}.gate_proj.weight"), width, hidden)?,
            up: self.mat(&format!("{prefix}.up_proj.weight"), width, hidden)?,
            down: self.mat(&format!("{prefix}.down_proj.weight"), hidden, width)?,
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
        let h = cfg.num_attention_heads;
        let mut req = Req { src };
        let total = cfg.num_hidden_layers + 2;
        let embed = req.mat("model.embed_tokens.weight", cfg.vocab_size, d)?;
        progress(1, total);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let q = match cfg.q_lora_rank {
                None => QProj::Direct(req.mat(
                    &format!("{p}.self_attn.q_proj.weight"),
                    h * cfg.qk_head_dim(),
                    d,
                )?),
                Some(rq) => QProj::LowRank {
                    a: req.mat(&format!("{p}.self_attn.q_a_proj.weight"), rq, d)?,
                    norm: req.vec(&format!("{p}.self_attn.q_a_layernorm.weight"), rq)?,
                    b: req.mat(
                        &format!("{p}.self_attn.q_b_proj.weight"),
                        h * cfg.qk_head_dim(),
                        rq,
                    )?,
                },
            };
            let attn = Attention {
                q,
                kv_a: req.mat(
                    &format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
                    cfg.latent_dim(),
                    d,
                )?,
                kv_a_norm: req.vec(
                    &format!("{p}.self_attn.kv_a_layernorm.weight"),
                    cfg.kv_lora_rank,
                )?,
                kv_b: req.mat(
                    &format!("{p}.self_attn.kv_b_proj.weight"),
                    h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                    cfg.kv_lora_rank,
                )?,
                o: req.mat(
                    &format!("{p}.self_attn.o_proj.weight"),
                    d,
                    h * cfg.v_head_dim,
                )?,
            };
            let ffn = if cfg.is_moe_layer(l) {
                let e = cfg.n_routed_experts.unwrap_or(0);
                let w = cfg.moe_intermediate_size;
                let bias_name = format!("{p}.mlp.gate.e_score_correction_bias");
                // The correction bias belongs to noaux_tc; V3 checkpoints always carry it.
                let bias =
                    if req.src.contains(&bias_name) || cfg.model_type == ModelType::DeepseekV3 {
                        Some(req.vec(&bias_name, e)?)
                    } else {
                        None
                    };
                let experts = (0..e)
                    .map(|i| req.mlp(&format!("{p}.mlp.experts.{i}"), d, w))
                    .collect::<Result<Vec<_>, _>>()?;
                let shared = match cfg.n_shared_experts {
                    0 => None,
                    n => Some(req.mlp(&format!("{p}.mlp.shared_experts"), d, w * n)?),
                };
                Ffn::Moe(Moe {
                    router: req.mat(&format!("{p}.mlp.gate.weight"), e, d)?,
                    bias,
                    experts,
                    shared,
                })
            } else {
                Ffn::Dense(req.mlp(&format!("{p}.mlp"), d, cfg.intermediate_size)?)
            };
            layers.push(Layer {
                attn_norm: req.vec(&format!("{p}.input_layernorm.weight"), d)?,
                attn,
                ffn_norm: req.vec(&format!("{p}.post_attention_layernorm.weight"), d)?,
                ffn,
            });
            progress(l + 2, total);
        }
        let norm = req.vec("model.norm.weight", d)?;
        let lm_head = if cfg.tie_word_embeddings && !req.src.contains("lm_head.weight") {
            None
        } else {
            Some(req.mat("lm_head.weight", cfg.vocab_size, d)?)
        };
        progress(total, total);
        Ok(Weights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}
