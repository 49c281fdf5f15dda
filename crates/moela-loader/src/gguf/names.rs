//! The one table mapping GGUF tensor names (`deepseek2`, `deepseek32`, `deepseek4`, `qwen2`, `llama`) to
//! HF checkpoint names (transformers' names; for `deepseek4` those of `DeepseekV4ForCausalLM`), the layout rule that relates llama.cpp's split `attn_k_b`/`attn_v_b` to HF's
//! `kv_b_proj`, and the per-architecture RoPE row permutation of `llama` files.
//!
//! Shapes below are row-major, outermost first (the reverse of ggml's dims). Every weight
//! except the three special kinds is the HF tensor unchanged: a ggml `{in, out}` tensor is the
//! HF `[out, in]` matrix byte for byte.
//!
//! Special kinds ([`RuleKind`]):
//! - **Stacked experts**: `blk.N.ffn_{gate,up}_exps` is `[E, ff, D]` and `ffn_down_exps`
//!   `[E, D, ff]`; slice `e` of the outermost axis is HF's
//!   `model.layers.N.mlp.experts.{e}.{gate,up,down}_proj.weight` (converter: `torch.stack`).
//! - **`attn_k_b` / `attn_v_b`** (MLA-split files): with H heads, dn = qk_nope_head_dim,
//!   dv = v_head_dim, r = kv_lora_rank, and `kv_b_proj` [H·(dn+dv), r] viewed [H, dn+dv, r]:
//!   `k_b` = `kv_b[:, :dn, :]` **transposed per head** → [H, r, dn] (ggml `{dn, r, H}`), and
//!   `v_b` = `kv_b[:, dn:, :]` as is → [H, dv, r] (ggml `{r, dv, H}`). So
//!   `kv_b_proj[h·(dn+dv) + i, j] = k_b[h, j, i]` for i < dn and
//!   `kv_b_proj[h·(dn+dv) + dn + i, j] = v_b[h, i, j]` for i < dv: per head, the dn W_UK rows
//!   then the dv W_UV rows. [`kv_b_from_split`] and [`split_kv_b`] implement exactly this
//!   (llama.cpp `convert_hf_to_gguf.py`, `DeepseekV2Model.modify_tensors`).
//!   Older files carry the fused `attn_kv_b` instead, which is `kv_b_proj` unchanged.
//! - **`exp_probs_b.bias`** is `mlp.gate.e_score_correction_bias` [E] (V3 family).
//!
//! - **RoPE-permuted rows** ([`ROPE_PERMUTED`]): llama.cpp's converter stores a `llama` file's
//!   `attn_q`/`attn_k` (weights and biases) with each head's rows reordered from HF's rotate-half
//!   layout to interleaved pairs (`LlamaModel.permute`: view `[heads, 2, head_dim/2, …]`, swap
//!   the two middle axes): GGUF row `2i + j` of a head is HF row `j·head_dim/2 + i`. Loading
//!   undoes it ([`unpermute_rope_rows`]). `qwen2` (NeoX RoPE in llama.cpp) and `deepseek2` files
//!   keep HF's order.
//! - **`rope_freqs.weight`** (`llama`, `[head_dim/2]` F32) has no HF tensor: it is Llama-3 RoPE
//!   scaling as one divisor per frequency, read into the config.
//!
//! - **Families** ([`Family`]): four GGUF names stand for different HF tensors in DeepSeek-V4
//!   (`attn_q_a_norm`, `attn_kv_a_norm`, `indexer.attn_q_b`, `indexer.proj`), so a rule serves every
//!   architecture or one family; a lookup names the family it reads or writes.
//! - **`ffn_gate_tid2eid`** (`deepseek4`) is V4's hash-routing table `mlp.gate.tid2eid`
//!   `[vocab, experts_per_token]`, stored I32.
//!
//! MTP (`nextn`) names follow llama.cpp's `blk.N.nextn.*` spelling for the extra layer
//! N = num_hidden_layers; llama.cpp's deepseek2 converter does not export that layer today.

use super::GgufError;

/// How a GGUF tensor relates to the HF tensor(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// The same tensor, same bytes.
    Plain,
    /// All routed experts stacked on the outermost axis; `hf` contains `{e}`.
    StackedExperts(ExpertProj),
    /// `attn_k_b`: the W_UK rows of `kv_b_proj`, transposed per head.
    KvBNope,
    /// `attn_v_b`: the W_UV rows of `kv_b_proj`.
    KvBValue,
}

/// Which projection of a routed expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertProj {
    Gate,
    Up,
    Down,
}

impl ExpertProj {
    pub fn hf_name(self) -> &'static str {
        match self {
            ExpertProj::Gate => "gate_proj",
            ExpertProj::Up => "up_proj",
            ExpertProj::Down => "down_proj",
        }
    }
}

/// Whose names a rule gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `deepseek2`, `deepseek32`, `qwen2`, `llama`.
    Standard,
    /// `deepseek4` (transformers' DeepSeek-V4 names).
    V4,
}

impl Family {
    /// The family of GGUF architecture `arch`.
    pub fn of_arch(arch: &str) -> Family {
        if arch == "deepseek4" {
            Family::V4
        } else {
            Family::Standard
        }
    }
}

/// One row of the name table: GGUF name ↔ HF name, both as suffixes after the layer prefix
/// (`blk.N.` / `model.layers.N.`) for [`LAYER_NAMES`], or whole for [`GLOBAL_NAMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRule {
    pub gguf: &'static str,
    pub hf: &'static str,
    pub kind: RuleKind,
    /// The one family the rule serves; `None`: every family.
    pub family: Option<Family>,
}

impl NameRule {
    fn serves(&self, family: Family) -> bool {
        self.family.is_none_or(|f| f == family)
    }
}

const fn rule(gguf: &'static str, hf: &'static str, family: Option<Family>) -> NameRule {
    NameRule {
        gguf,
        hf,
        kind: RuleKind::Plain,
        family,
    }
}

/// The same tensor in every family.
const fn plain(gguf: &'static str, hf: &'static str) -> NameRule {
    rule(gguf, hf, None)
}

/// A name of the standard family only.
const fn standard(gguf: &'static str, hf: &'static str) -> NameRule {
    rule(gguf, hf, Some(Family::Standard))
}

/// A `deepseek4` name.
const fn v4(gguf: &'static str, hf: &'static str) -> NameRule {
    rule(gguf, hf, Some(Family::V4))
}

const fn stacked(gguf: &'static str, hf: &'static str, proj: ExpertProj) -> NameRule {
    NameRule {
        gguf,
        hf,
        kind: RuleKind::StackedExperts(proj),
        family: None,
    }
}

const fn kv_b(gguf: &'static str, kind: RuleKind) -> NameRule {
    NameRule {
        gguf,
        hf: "self_attn.kv_b_proj.weight",
        kind,
        family: Some(Family::Standard),
    }
}

/// Tensors outside the layers.
pub const GLOBAL_NAMES: &[NameRule] = &[
    plain("token_embd.weight", "model.embed_tokens.weight"), // [V, D]
    plain("output_norm.weight", "model.norm.weight"),        // [D]
    plain("output.weight", "lm_head.weight"),                // [V, D]
    // DeepSeek-V4's final hyper-connection collapse: fn [hc, hc·D] F32, base [hc], scale [1].
    v4("output_hc_fn.weight", "model.hc_head.hc_fn"),
    v4("output_hc_base.weight", "model.hc_head.hc_base"),
    v4("output_hc_scale.weight", "model.hc_head.hc_scale"),
];

/// Per-layer tensors (`blk.N.` ↔ `model.layers.N.`).
pub const LAYER_NAMES: &[NameRule] = &[
    plain("attn_norm.weight", "input_layernorm.weight"),
    plain("attn_q.weight", "self_attn.q_proj.weight"), // no q-LoRA (V2-Lite); GQA
    plain("attn_k.weight", "self_attn.k_proj.weight"), // GQA (qwen2, llama)
    plain("attn_v.weight", "self_attn.v_proj.weight"), // GQA
    plain("attn_q.bias", "self_attn.q_proj.bias"),     // qwen2; llama attention_bias
    plain("attn_k.bias", "self_attn.k_proj.bias"),
    plain("attn_v.bias", "self_attn.v_proj.bias"),
    plain("attn_output.bias", "self_attn.o_proj.bias"), // llama attention_bias
    plain("attn_q_a.weight", "self_attn.q_a_proj.weight"),
    standard("attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight"),
    v4("attn_q_a_norm.weight", "self_attn.q_a_norm.weight"),
    plain("attn_q_b.weight", "self_attn.q_b_proj.weight"),
    plain(
        "attn_kv_a_mqa.weight",
        "self_attn.kv_a_proj_with_mqa.weight",
    ), // [r + dr, D]
    standard("attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight"),
    standard("attn_kv_b.weight", "self_attn.kv_b_proj.weight"), // older files: fused
    kv_b("attn_k_b.weight", RuleKind::KvBNope),
    kv_b("attn_v_b.weight", RuleKind::KvBValue),
    plain("attn_output.weight", "self_attn.o_proj.weight"),
    // V3.2's lightning indexer (`deepseek32`).
    standard("indexer.attn_q_b.weight", "self_attn.indexer.wq_b.weight"),
    plain("indexer.attn_k.weight", "self_attn.indexer.wk.weight"),
    plain("indexer.k_norm.weight", "self_attn.indexer.k_norm.weight"),
    plain("indexer.k_norm.bias", "self_attn.indexer.k_norm.bias"),
    standard(
        "indexer.proj.weight",
        "self_attn.indexer.weights_proj.weight",
    ),
    // DeepSeek-V4 (`deepseek4`): one K = V head, grouped low-rank output, per-head sinks.
    v4("attn_kv.weight", "self_attn.kv_proj.weight"),
    v4("attn_kv_a_norm.weight", "self_attn.kv_norm.weight"),
    v4("attn_output_a.weight", "self_attn.o_a_proj.weight"), // [o_groups·o_lora_rank, H·hd/o_groups]
    v4("attn_output_b.weight", "self_attn.o_b_proj.weight"),
    v4("attn_sinks.weight", "self_attn.sinks"),
    // V4's compressors (CSA and HCA layers); `_ape` is the position bias [ratio, width], F32.
    v4(
        "attn_compressor_kv.weight",
        "self_attn.compressor.kv_proj.weight",
    ),
    v4(
        "attn_compressor_gate.weight",
        "self_attn.compressor.gate_proj.weight",
    ),
    v4(
        "attn_compressor_ape.weight",
        "self_attn.compressor.position_bias",
    ),
    v4(
        "attn_compressor_norm.weight",
        "self_attn.compressor.kv_norm.weight",
    ),
    // V4's CSA indexer and its compressor.
    v4(
        "indexer_compressor_kv.weight",
        "self_attn.compressor.indexer.kv_proj.weight",
    ),
    v4(
        "indexer_compressor_gate.weight",
        "self_attn.compressor.indexer.gate_proj.weight",
    ),
    v4(
        "indexer_compressor_ape.weight",
        "self_attn.compressor.indexer.position_bias",
    ),
    v4(
        "indexer_compressor_norm.weight",
        "self_attn.compressor.indexer.kv_norm.weight",
    ),
    v4(
        "indexer.attn_q_b.weight",
        "self_attn.compressor.indexer.q_b_proj.weight",
    ),
    v4(
        "indexer.proj.weight",
        "self_attn.compressor.indexer.scorer.weights_proj.weight",
    ),
    // V4's hyper-connections around each sublayer: fn [(2 + hc)·hc, hc·D] F32, base, scale [3].
    v4("hc_attn_fn.weight", "attn_hc.fn"),
    v4("hc_attn_base.weight", "attn_hc.base"),
    v4("hc_attn_scale.weight", "attn_hc.scale"),
    v4("hc_ffn_fn.weight", "ffn_hc.fn"),
    v4("hc_ffn_base.weight", "ffn_hc.base"),
    v4("hc_ffn_scale.weight", "ffn_hc.scale"),
    v4("ffn_gate_tid2eid.weight", "mlp.gate.tid2eid"), // V4's hash layers, I32
    plain("ffn_norm.weight", "post_attention_layernorm.weight"),
    plain("ffn_gate.weight", "mlp.gate_proj.weight"),
    plain("ffn_up.weight", "mlp.up_proj.weight"),
    plain("ffn_down.weight", "mlp.down_proj.weight"),
    plain("ffn_gate_inp.weight", "mlp.gate.weight"), // router [E, D]
    plain("exp_probs_b.bias", "mlp.gate.e_score_correction_bias"), // [E], F32
    stacked(
        "ffn_gate_exps.weight",
        "mlp.experts.{e}.gate_proj.weight",
        ExpertProj::Gate,
    ),
    stacked(
        "ffn_up_exps.weight",
        "mlp.experts.{e}.up_proj.weight",
        ExpertProj::Up,
    ),
    stacked(
        "ffn_down_exps.weight",
        "mlp.experts.{e}.down_proj.weight",
        ExpertProj::Down,
    ),
    plain(
        "ffn_gate_shexp.weight",
        "mlp.shared_experts.gate_proj.weight",
    ),
    plain("ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"),
    plain(
        "ffn_down_shexp.weight",
        "mlp.shared_experts.down_proj.weight",
    ),
    // MTP layer extras (llama.cpp NEXTN_* names).
    standard("nextn.eh_proj.weight", "eh_proj.weight"),
    standard("nextn.enorm.weight", "enorm.weight"),
    standard("nextn.hnorm.weight", "hnorm.weight"),
    standard("nextn.embed_tokens.weight", "embed_tokens.weight"),
    standard("nextn.shared_head_norm.weight", "shared_head.norm.weight"),
    standard("nextn.shared_head_head.weight", "shared_head.head.weight"),
];

/// Whose heads a RoPE-permuted tensor's rows belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeHeads {
    /// `num_attention_heads` heads (`attn_q`).
    Query,
    /// `num_key_value_heads` heads (`attn_k`).
    KeyValue,
}

/// `(architecture, per-layer GGUF name, heads)`: tensors stored with each head's rows permuted
/// to interleaved RoPE pairs (see the module docs).
pub const ROPE_PERMUTED: &[(&str, &str, RopeHeads)] = &[
    ("llama", "attn_q.weight", RopeHeads::Query),
    ("llama", "attn_q.bias", RopeHeads::Query),
    ("llama", "attn_k.weight", RopeHeads::KeyValue),
    ("llama", "attn_k.bias", RopeHeads::KeyValue),
];

/// Whether GGUF tensor `name` (`blk.N.…`) of an `arch` file has RoPE-permuted rows, and whose.
pub fn rope_permuted(arch: &str, name: &str) -> Option<RopeHeads> {
    let (_, rest) = split_layer(name, "blk.")?;
    ROPE_PERMUTED
        .iter()
        .find(|(a, g, _)| *a == arch && *g == rest)
        .map(|&(_, _, h)| h)
}

/// Checks that `len` rows of `row_len` items split into `n_heads` heads of an even row count;
/// returns half a head's rows.
fn rope_half(len: usize, n_heads: usize, row_len: usize) -> Result<usize, GgufError> {
    let rows = len.checked_div(row_len).unwrap_or(0);
    let per_head = rows.checked_div(n_heads).unwrap_or(0);
    if row_len == 0
        || n_heads == 0
        || rows * row_len != len
        || per_head * n_heads != rows
        || !per_head.is_multiple_of(2)
    {
        return Err(GgufError::input(
            "RoPE row permutation",
            format!("{len} items are not {n_heads} heads of an even number of {row_len}-item rows"),
        ));
    }
    Ok(per_head / 2)
}

/// Undoes llama.cpp's `LlamaModel.permute` on `data` (`[n_heads·head_dim, row_len]` row-major,
/// any element type — f32 values, or the bytes of quantized rows): HF row `j·half + i` of a
/// head is GGUF row `2i + j`.
pub fn unpermute_rope_rows<T: Copy>(
    data: &[T],
    n_heads: usize,
    row_len: usize,
) -> Result<Vec<T>, GgufError> {
    let half = rope_half(data.len(), n_heads, row_len)?;
    let mut out = Vec::with_capacity(data.len());
    for head in data.chunks_exact(2 * half * row_len) {
        for j in 0..2 {
            for i in 0..half {
                let r = 2 * i + j;
                out.extend_from_slice(&head[r * row_len..(r + 1) * row_len]);
            }
        }
    }
    Ok(out)
}

/// The converter's permutation (the inverse of [`unpermute_rope_rows`]).
pub fn permute_rope_rows<T: Copy>(
    data: &[T],
    n_heads: usize,
    row_len: usize,
) -> Result<Vec<T>, GgufError> {
    let half = rope_half(data.len(), n_heads, row_len)?;
    let mut out = Vec::with_capacity(data.len());
    for head in data.chunks_exact(2 * half * row_len) {
        for i in 0..half {
            for j in 0..2 {
                let r = j * half + i;
                out.extend_from_slice(&head[r * row_len..(r + 1) * row_len]);
            }
        }
    }
    Ok(out)
}

/// What a GGUF tensor is in HF terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HfName {
    /// Exactly this HF tensor.
    Whole(String),
    /// All routed experts of `layer`: slice `e` is [`HfName::expert_name`]`(e)`.
    StackedExperts { layer: usize, proj: ExpertProj },
    /// `attn_k_b` of `layer`: part of `model.layers.{layer}.self_attn.kv_b_proj.weight`.
    KvBNope { layer: usize },
    /// `attn_v_b` of `layer`: part of `model.layers.{layer}.self_attn.kv_b_proj.weight`.
    KvBValue { layer: usize },
}

impl HfName {
    /// The HF name of expert `e` of a stacked tensor (`None` for other kinds).
    pub fn expert_name(&self, e: usize) -> Option<String> {
        match self {
            HfName::StackedExperts { layer, proj } => Some(format!(
                "model.layers.{layer}.mlp.experts.{e}.{}.weight",
                proj.hf_name()
            )),
            _ => None,
        }
    }

    /// The HF tensor this one is (part of); for stacked experts, the `{e}` pattern.
    pub fn hf_tensor(&self) -> String {
        match self {
            HfName::Whole(n) => n.clone(),
            HfName::StackedExperts { layer, proj } => format!(
                "model.layers.{layer}.mlp.experts.{{e}}.{}.weight",
                proj.hf_name()
            ),
            HfName::KvBNope { layer } | HfName::KvBValue { layer } => {
                format!("model.layers.{layer}.self_attn.kv_b_proj.weight")
            }
        }
    }
}

/// Where an HF tensor lives in a `deepseek2` GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GgufTarget {
    /// Exactly this GGUF tensor.
    Whole(String),
    /// Slice `expert` of the outermost axis of this stacked tensor.
    Expert { name: String, expert: usize },
    /// `kv_b_proj`: the fused tensor in older files, or the split pair (see [`kv_b_from_split`]).
    KvB {
        fused: String,
        k_b: String,
        v_b: String,
    },
}

/// Parses a canonical decimal layer index (no sign, no leading zeros).
fn parse_index(s: &str) -> Option<usize> {
    let n: usize = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// Splits `"{prefix}{N}.{rest}"` into `(N, rest)`.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let tail = name.strip_prefix(prefix)?;
    let (n, rest) = tail.split_once('.')?;
    Some((parse_index(n)?, rest))
}

/// The HF name(s) of a GGUF tensor of `family`; `None` for names outside the table.
pub fn gguf_name_to_hf(family: Family, name: &str) -> Option<HfName> {
    if let Some(r) = GLOBAL_NAMES
        .iter()
        .find(|r| r.serves(family) && r.gguf == name)
    {
        return Some(HfName::Whole(r.hf.to_string()));
    }
    let (layer, rest) = split_layer(name, "blk.")?;
    let rule = LAYER_NAMES
        .iter()
        .find(|r| r.serves(family) && r.gguf == rest)?;
    Some(match rule.kind {
        RuleKind::Plain => HfName::Whole(format!("model.layers.{layer}.{}", rule.hf)),
        RuleKind::StackedExperts(proj) => HfName::StackedExperts { layer, proj },
        RuleKind::KvBNope => HfName::KvBNope { layer },
        RuleKind::KvBValue => HfName::KvBValue { layer },
    })
}

/// Where an HF checkpoint tensor is found in a GGUF file of `family`; `None` for names outside
/// the table.
pub fn hf_name_to_gguf(family: Family, name: &str) -> Option<GgufTarget> {
    if let Some(r) = GLOBAL_NAMES
        .iter()
        .find(|r| r.serves(family) && r.hf == name)
    {
        return Some(GgufTarget::Whole(r.gguf.to_string()));
    }
    let (layer, rest) = split_layer(name, "model.layers.")?;
    if let Some(tail) = rest.strip_prefix("mlp.experts.") {
        let (e, proj) = tail.split_once('.')?;
        let expert = parse_index(e)?;
        let rule = LAYER_NAMES.iter().find(|r| match r.kind {
            RuleKind::StackedExperts(p) => format!("{}.weight", p.hf_name()) == proj,
            _ => false,
        })?;
        return Some(GgufTarget::Expert {
            name: format!("blk.{layer}.{}", rule.gguf),
            expert,
        });
    }
    if family == Family::Standard && rest == "self_attn.kv_b_proj.weight" {
        return Some(GgufTarget::KvB {
            fused: format!("blk.{layer}.attn_kv_b.weight"),
            k_b: format!("blk.{layer}.attn_k_b.weight"),
            v_b: format!("blk.{layer}.attn_v_b.weight"),
        });
    }
    let rule = LAYER_NAMES
        .iter()
        .find(|r| r.kind == RuleKind::Plain && r.serves(family) && r.hf == rest)?;
    Some(GgufTarget::Whole(format!("blk.{layer}.{}", rule.gguf)))
}

/// The MLA sizes that shape `kv_b_proj` and its split halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvBDims {
    pub n_heads: usize,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub v_head_dim: usize,
}

impl KvBDims {
    /// The sizes of MLA attention `m` with `heads` heads.
    pub fn of(heads: usize, m: &moela_model::MlaConfig) -> KvBDims {
        KvBDims {
            n_heads: heads,
            kv_lora_rank: m.kv_lora_rank,
            qk_nope_head_dim: m.qk_nope_head_dim,
            v_head_dim: m.v_head_dim,
        }
    }

    /// (elements of k_b, of v_b, of kv_b); `None` if a size is zero or they overflow.
    fn sizes(&self) -> Option<(usize, usize, usize)> {
        if [
            self.n_heads,
            self.kv_lora_rank,
            self.qk_nope_head_dim,
            self.v_head_dim,
        ]
        .contains(&0)
        {
            return None;
        }
        let h = self.n_heads;
        let r = self.kv_lora_rank;
        let k = h.checked_mul(r)?.checked_mul(self.qk_nope_head_dim)?;
        let v = h.checked_mul(r)?.checked_mul(self.v_head_dim)?;
        Some((k, v, k.checked_add(v)?))
    }
}

fn length_error(what: &str, found: usize, expected: usize, d: &KvBDims) -> GgufError {
    GgufError::input(
        what,
        format!(
            "{found} elements, expected {expected} (heads {}, kv_lora_rank {}, qk_nope_head_dim {}, v_head_dim {})",
            d.n_heads, d.kv_lora_rank, d.qk_nope_head_dim, d.v_head_dim
        ),
    )
}

/// Rebuilds HF's `kv_b_proj` [H·(dn+dv), r] from `attn_k_b` [H, r, dn] and `attn_v_b`
/// [H, dv, r] (row-major element slices, already dequantized): per head h, rows
/// `h·(dn+dv) + i` (i < dn) are `k_b[h, :, i]` and rows `h·(dn+dv) + dn + i` (i < dv) are
/// `v_b[h, i, :]`.
pub fn kv_b_from_split<T: Copy>(k_b: &[T], v_b: &[T], d: KvBDims) -> Result<Vec<T>, GgufError> {
    let (nk, nv, total) = d
        .sizes()
        .ok_or_else(|| GgufError::input("kv_b_proj", format!("bad sizes {d:?}")))?;
    if k_b.len() != nk {
        return Err(length_error("attn_k_b", k_b.len(), nk, &d));
    }
    if v_b.len() != nv {
        return Err(length_error("attn_v_b", v_b.len(), nv, &d));
    }
    let (r, dn, dv) = (d.kv_lora_rank, d.qk_nope_head_dim, d.v_head_dim);
    let mut out = Vec::with_capacity(total);
    for (kh, vh) in k_b.chunks_exact(r * dn).zip(v_b.chunks_exact(dv * r)) {
        // W_UK rows: row i of the head is column i of k_b's [r, dn] block.
        for i in 0..dn {
            out.extend(kh.iter().skip(i).step_by(dn).copied());
        }
        // W_UV rows: v_b's [dv, r] block as is.
        out.extend_from_slice(vh);
    }
    Ok(out)
}

/// The inverse of [`kv_b_from_split`]: `kv_b_proj` [H·(dn+dv), r] → (`attn_k_b` [H, r, dn],
/// `attn_v_b` [H, dv, r]).
pub fn split_kv_b<T: Copy>(kv_b: &[T], d: KvBDims) -> Result<(Vec<T>, Vec<T>), GgufError> {
    let (nk, nv, total) = d
        .sizes()
        .ok_or_else(|| GgufError::input("kv_b_proj", format!("bad sizes {d:?}")))?;
    if kv_b.len() != total {
        return Err(length_error("kv_b_proj", kv_b.len(), total, &d));
    }
    let (r, dn) = (d.kv_lora_rank, d.qk_nope_head_dim);
    let mut k_b = Vec::with_capacity(nk);
    let mut v_b = Vec::with_capacity(nv);
    let per_head = (dn + d.v_head_dim) * r;
    for head in kv_b.chunks_exact(per_head) {
        let (uk, uv) = head.split_at(dn * r);
        // k_b[h, j, i] = W_UK[h, i, j]: column j of the [dn, r] block, for each j.
        for j in 0..r {
            k_b.extend(uk.iter().skip(j).step_by(r).copied());
        }
        v_b.extend_from_slice(uv);
    }
    Ok((k_b, v_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_round_trips() {
        for family in [Family::Standard, Family::V4] {
            for r in GLOBAL_NAMES.iter().filter(|r| r.serves(family)) {
                assert_eq!(
                    gguf_name_to_hf(family, r.gguf),
                    Some(HfName::Whole(r.hf.into()))
                );
                assert_eq!(
                    hf_name_to_gguf(family, r.hf),
                    Some(GgufTarget::Whole(r.gguf.into()))
                );
            }
            let plain = LAYER_NAMES
                .iter()
                .filter(|r| r.kind == RuleKind::Plain && r.serves(family));
            for r in plain {
                let g = format!("blk.7.{}", r.gguf);
                let h = format!("model.layers.7.{}", r.hf);
                if r.gguf == "attn_kv_b.weight" {
                    assert!(matches!(
                        hf_name_to_gguf(family, &h),
                        Some(GgufTarget::KvB { .. })
                    ));
                } else {
                    assert_eq!(
                        hf_name_to_gguf(family, &h),
                        Some(GgufTarget::Whole(g.clone()))
                    );
                }
                assert_eq!(gguf_name_to_hf(family, &g), Some(HfName::Whole(h)));
            }
        }
    }

    #[test]
    fn families_tell_apart_the_names_v4_reuses() {
        let (s, v) = (Family::Standard, Family::V4);
        assert_eq!(
            gguf_name_to_hf(v, "blk.1.indexer.proj.weight"),
            Some(HfName::Whole(
                "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight".into()
            ))
        );
        assert_eq!(
            gguf_name_to_hf(s, "blk.1.indexer.proj.weight"),
            Some(HfName::Whole(
                "model.layers.1.self_attn.indexer.weights_proj.weight".into()
            ))
        );
        assert_eq!(
            hf_name_to_gguf(v, "model.layers.0.self_attn.kv_norm.weight"),
            Some(GgufTarget::Whole("blk.0.attn_kv_a_norm.weight".into()))
        );
        assert_eq!(
            hf_name_to_gguf(s, "model.layers.0.self_attn.kv_a_layernorm.weight"),
            Some(GgufTarget::Whole("blk.0.attn_kv_a_norm.weight".into()))
        );
        // Each family's own tensors are absent from the other.
        assert_eq!(hf_name_to_gguf(s, "model.hc_head.hc_fn"), None);
        assert_eq!(
            hf_name_to_gguf(v, "model.layers.0.self_attn.kv_b_proj.weight"),
            None
        );
        assert_eq!(
            hf_name_to_gguf(v, "model.layers.2.mlp.experts.5.up_proj.weight"),
            Some(GgufTarget::Expert {
                name: "blk.2.ffn_up_exps.weight".into(),
                expert: 5
            })
        );
        assert_eq!(Family::of_arch("deepseek4"), v);
        assert_eq!(Family::of_arch("deepseek32"), s);
    }

    #[test]
    fn experts_and_kv_b() {
        let n = gguf_name_to_hf(Family::Standard, "blk.3.ffn_down_exps.weight").unwrap();
        assert_eq!(
            n.expert_name(5).unwrap(),
            "model.layers.3.mlp.experts.5.down_proj.weight"
        );
        assert_eq!(
            hf_name_to_gguf(
                Family::Standard,
                "model.layers.3.mlp.experts.5.down_proj.weight"
            ),
            Some(GgufTarget::Expert {
                name: "blk.3.ffn_down_exps.weight".into(),
                expert: 5
            })
        );
        assert_eq!(
            gguf_name_to_hf(Family::Standard, "blk.0.attn_k_b.weight"),
            Some(HfName::KvBNope { layer: 0 })
        );
        assert_eq!(
            hf_name_to_gguf(
                Family::Standard,
                "model.layers.2.self_attn.kv_b_proj.weight"
            ),
            Some(GgufTarget::KvB {
                fused: "blk.2.attn_kv_b.weight".into(),
                k_b: "blk.2.attn_k_b.weight".into(),
                v_b: "blk.2.attn_v_b.weight".into(),
            })
        );
        assert_eq!(
            gguf_name_to_hf(Family::Standard, "blk.1.exp_probs_b.bias"),
            Some(HfName::Whole(
                "model.layers.1.mlp.gate.e_score_correction_bias".into()
            ))
        );
    }

    #[test]
    fn rope_permutation_matches_the_converter_rule() {
        // 2 heads of head_dim 4 (half 2), rows of 3 items; value = 10·row + col.
        let hf: Vec<u32> = (0..8)
            .flat_map(|r| (0..3).map(move |c| 10 * r + c))
            .collect();
        let g = permute_rope_rows(&hf, 2, 3).unwrap();
        // LlamaModel.permute: reshape(2, 2, 2, 3).swapaxes(1, 2) → per head rows 0, 2, 1, 3.
        let rows: Vec<u32> = g.chunks(3).map(|r| r[0] / 10).collect();
        assert_eq!(rows, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rope_rows(&g, 2, 3).unwrap(), hf);
        // Biases: rows of one item.
        let b: Vec<u32> = (0..8).collect();
        assert_eq!(
            unpermute_rope_rows(&permute_rope_rows(&b, 2, 1).unwrap(), 2, 1).unwrap(),
            b
        );
        assert!(unpermute_rope_rows(&b, 3, 1).is_err());
        assert!(unpermute_rope_rows(&b[..6], 2, 1).is_err());
        assert!(unpermute_rope_rows(&b, 0, 1).is_err());
        assert_eq!(
            rope_permuted("llama", "blk.3.attn_k.bias"),
            Some(RopeHeads::KeyValue)
        );
        assert_eq!(rope_permuted("qwen2", "blk.3.attn_k.weight"), None);
        assert_eq!(rope_permuted("llama", "blk.3.attn_v.weight"), None);
        assert_eq!(
            hf_name_to_gguf(Family::Standard, "model.layers.1.self_attn.o_proj.bias"),
            Some(GgufTarget::Whole("blk.1.attn_output.bias".into()))
        );
    }

    #[test]
    fn rejects_odd_names() {
        for n in [
            "blk.01.attn_norm.weight",
            "blk.+1.attn_norm.weight",
            "blk..attn_norm.weight",
            "blk.1.attn_norm",
            "blk.1",
            "token_embd",
            "",
        ] {
            assert_eq!(gguf_name_to_hf(Family::Standard, n), None, "{n}");
        }
        for n in [
            "model.layers.1.mlp.experts.x.up_proj.weight",
            "model.layers.1.mlp.experts.1.proj.weight",
            "model.layers.1.mlp.experts.{e}.gate_proj.weight",
            "model.layers.1",
        ] {
            assert_eq!(hf_name_to_gguf(Family::Standard, n), None, "{n}");
        }
    }

    #[test]
    fn kv_b_split_matches_the_converter_rule() {
        // H=2, dn=3, dv=2, r=4; kv_b[row, col] = 100·row + col.
        let d = KvBDims {
            n_heads: 2,
            kv_lora_rank: 4,
            qk_nope_head_dim: 3,
            v_head_dim: 2,
        };
        let kv_b: Vec<u32> = (0..10)
            .flat_map(|row| (0..4).map(move |c| 100 * row + c))
            .collect();
        let (k_b, v_b) = split_kv_b(&kv_b, d).unwrap();
        // k_b[h, j, i] = kv_b[h·5 + i, j]
        for h in 0..2 {
            for j in 0..4 {
                for i in 0..3 {
                    assert_eq!(
                        k_b[h * 12 + j * 3 + i],
                        100 * (h as u32 * 5 + i as u32) + j as u32
                    );
                }
            }
            for i in 0..2 {
                for j in 0..4 {
                    assert_eq!(
                        v_b[h * 8 + i * 4 + j],
                        100 * (h as u32 * 5 + 3 + i as u32) + j as u32
                    );
                }
            }
        }
        assert_eq!(kv_b_from_split(&k_b, &v_b, d).unwrap(), kv_b);
        assert!(kv_b_from_split(&k_b[1..], &v_b, d).is_err());
        assert!(split_kv_b(&kv_b[1..], d).is_err());
    }
}
