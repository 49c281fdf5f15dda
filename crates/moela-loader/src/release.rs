//! DeepSeek's own release storage (V4): FP8 weights with ue8m0 block scales named
//! `<stem>.scale`, and routed experts in FP4 (e2m1 codes two per byte, one ue8m0 scale per 32
//! inputs). Both are read as stored: FP8 stays FP8 (its power-of-two scales become the f32
//! block scales the FP8 kernels take), FP4 is repacked bit for bit into GGUF's `MXFP4` blocks.

use std::collections::HashMap;

use moela_kernels::fp::e8m0_to_f32;
use moela_kernels::mxfp4::QK_MXFP4;
use moela_model::ModelError;

use crate::gguf::ExpertProj;

/// DeepSeek's name for the scales of weight `name` (`layers.0.attn.wq_a.weight` →
/// `layers.0.attn.wq_a.scale`); `None` for a name that does not end in `.weight`.
pub(crate) fn scale_name(name: &str) -> Option<String> {
    name.strip_suffix(".weight")
        .map(|stem| format!("{stem}.scale"))
}

/// The values of ue8m0 scale bytes (`F8_E8M0`), 2^(e−127) each; the byte 0xFF (NaN in the OCP
/// MX format) is an error naming the tensor and the position.
pub(crate) fn e8m0_values(name: &str, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    if let Some(i) = bytes.iter().position(|&e| e == 0xFF) {
        return Err(ModelError::Tensor {
            name: name.into(),
            msg: format!("scale {i} is 0xFF (NaN in F8_E8M0)"),
        });
    }
    Ok(bytes.iter().map(|&e| e8m0_to_f32(e)).collect())
}

/// True when a tensor of dtype `dtype` and shape `shape` holds the FP4 codes of a
/// `[rows, cols]` matrix: safetensors' `F4` with the logical shape, or bytes (`I8`/`U8`, as
/// `float4_e2m1fn_x2` is written by tools without an FP4 type) with two codes per byte.
pub(crate) fn fp4_codes(dtype: &str, shape: &[usize], rows: usize, cols: usize) -> bool {
    if !cols.is_multiple_of(QK_MXFP4) {
        return false;
    }
    match dtype {
        "F4" => shape == [rows, cols],
        "I8" | "U8" => shape == [rows, cols / 2],
        _ => false,
    }
}

/// transformers' renames of DeepSeek-V4's release names (its conversion mapping for
/// `deepseek_v4`), applied in order to every occurrence: `(from, to)`; a `from` starting with `^`
/// only matches at the start.
const V4_RENAMES: &[(&str, &str)] = &[
    (".attn.", ".self_attn."),
    (".ffn.", ".mlp."),
    (".indexer.compressor.", ".compressor.indexer."),
    ("^embed.weight", "embed_tokens.weight"),
    ("^head.weight", "lm_head.weight"),
    ("^hc_head_fn", "hc_head.hc_fn"),
    ("^hc_head_base", "hc_head.hc_base"),
    ("^hc_head_scale", "hc_head.hc_scale"),
    (".attn_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
    (".hc_attn_fn", ".attn_hc.fn"),
    (".hc_attn_base", ".attn_hc.base"),
    (".hc_attn_scale", ".attn_hc.scale"),
    (".hc_ffn_fn", ".ffn_hc.fn"),
    (".hc_ffn_base", ".ffn_hc.base"),
    (".hc_ffn_scale", ".ffn_hc.scale"),
    (".attn_sink", ".sinks"),
    (
        ".indexer.weights_proj.",
        ".compressor.indexer.scorer.weights_proj.",
    ),
    (".indexer.wq_b.", ".compressor.indexer.q_b_proj."),
    (".norm.", ".kv_norm."),
    (".ape", ".position_bias"),
    (".wq_a.", ".q_a_proj."),
    (".self_attn.wq_b.", ".self_attn.q_b_proj."),
    (".wkv.", ".kv_proj."),
    (".wgate.", ".gate_proj."),
    (".wo_a.", ".o_a_proj."),
    (".wo_b.", ".o_b_proj."),
    (".q_norm.", ".q_a_norm."),
    (".gate.bias", ".gate.e_score_correction_bias"),
    (".shared_experts.w1.", ".shared_experts.gate_proj."),
    (".shared_experts.w2.", ".shared_experts.down_proj."),
    (".shared_experts.w3.", ".shared_experts.up_proj."),
];

/// The name transformers gives DeepSeek-V4 release tensor `release` (its state-dict name: the
/// renames, then `model.` before everything but the head).
pub(crate) fn v4_transformers_name(release: &str) -> String {
    let mut n = release.to_string();
    for (from, to) in V4_RENAMES {
        match from.strip_prefix('^') {
            Some(f) => {
                if let Some(rest) = n.strip_prefix(f) {
                    n = format!("{to}{rest}");
                }
            }
            None => n = n.replace(from, to),
        }
    }
    match n.starts_with("lm_head.") {
        true => n,
        false => format!("model.{n}"),
    }
}

/// A DeepSeek-V4 checkpoint in the release's own names, read by the names the model asks for
/// (transformers'): every stored tensor under its transformers name, and the routed experts,
/// stored one matrix per expert (`layers.N.ffn.experts.E.w1/w2/w3`), read where the model asks
/// for rows of transformers' stacked `mlp.experts.gate_up_proj` / `down_proj`.
pub(crate) struct V4ReleaseNames {
    stored: HashMap<String, String>,
    /// Decoder layers (`layers.N.*`); the MTP layers (`mtp.I.*`) are the model's layers after them.
    layers: usize,
}

/// The name Moela asks for DeepSeek-V4 MTP tensor `release` (`mtp.I.*`) by, with `layers`
/// decoder layers: its block's tensors as layer `layers + I`'s, and `enorm`, `hnorm`, `e_proj`,
/// `h_proj`, `shared_head.norm` (the release's `norm`) and `hc_head.*` under that layer.
fn v4_mtp_name(release: &str, layers: usize) -> Option<String> {
    let (i, suffix) = release.strip_prefix("mtp.")?.split_once('.')?;
    let l = layers.checked_add(i.parse().ok()?)?;
    let p = format!("model.layers.{l}");
    Some(match suffix {
        "e_proj.weight" | "h_proj.weight" | "enorm.weight" | "hnorm.weight" => {
            format!("{p}.{suffix}")
        }
        "norm.weight" => format!("{p}.shared_head.norm.weight"),
        "hc_head_fn" => format!("{p}.hc_head.hc_fn"),
        "hc_head_base" => format!("{p}.hc_head.hc_base"),
        "hc_head_scale" => format!("{p}.hc_head.hc_scale"),
        _ => v4_transformers_name(&format!("layers.{l}.{suffix}")),
    })
}

impl V4ReleaseNames {
    /// The names of a checkpoint holding `tensors`, if it is in DeepSeek's release layout (its
    /// embedding is `embed.weight`).
    pub(crate) fn detect<'a>(tensors: impl Iterator<Item = &'a str> + Clone) -> Option<Self> {
        if !tensors.clone().any(|t| t == "embed.weight") {
            return None;
        }
        let layers = tensors
            .clone()
            .filter_map(|t| {
                t.strip_prefix("layers.")?
                    .split_once('.')?
                    .0
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |l| l + 1);
        let stored = tensors
            .filter(|t| !t.ends_with(".scale")) // FP8/FP4 scales go with their weights
            .map(|t| {
                let name = v4_mtp_name(t, layers).unwrap_or_else(|| v4_transformers_name(t));
                (name, t.to_string())
            })
            .collect();
        Some(V4ReleaseNames { stored, layers })
    }

    /// The stored name of requested tensor `name` (itself when it is not one of the renamed).
    pub(crate) fn stored<'a>(&'a self, name: &'a str) -> &'a str {
        self.stored.get(name).map_or(name, String::as_str)
    }

    /// For rows `first..first + rows` of a stacked expert tensor, the stored per-expert matrix:
    /// `(name, rows, cols)` (see [`v4_expert_rows`]).
    pub(crate) fn expert(
        &self,
        name: &str,
        shape: &[usize],
        first: usize,
        rows: usize,
    ) -> Option<Result<(String, usize, usize), ModelError>> {
        Some(v4_expert_rows(name, shape, first, rows)?.map(|e| {
            let w = match e.proj {
                ExpertProj::Gate => "w1",
                ExpertProj::Up => "w3",
                ExpertProj::Down => "w2",
            };
            let mtp = e.layer.checked_sub(self.layers).filter(|_| self.layers > 0);
            let layer = match mtp {
                Some(i) => format!("mtp.{i}"),
                None => format!("layers.{}", e.layer),
            };
            let stored = format!("{layer}.ffn.experts.{}.{w}.weight", e.expert);
            (stored, e.rows, e.cols)
        }))
    }
}

/// One routed expert's projection, as the model asks for it from transformers' stacked tensors.
pub(crate) struct ExpertRows {
    pub layer: usize,
    pub expert: usize,
    pub proj: ExpertProj,
    pub rows: usize,
    pub cols: usize,
}

/// Which expert projection rows `first..first + rows` of transformers' stacked V4 expert tensor
/// `name` are: `…mlp.experts.gate_up_proj` `[E, 2·w, d]` holds each expert's gate rows then its
/// up rows, `…mlp.experts.down_proj` `[E, d, w]` its down rows. `None` for other names; an error
/// for a row range that is not one expert's whole projection.
pub(crate) fn v4_expert_rows(
    name: &str,
    shape: &[usize],
    first: usize,
    rows: usize,
) -> Option<Result<ExpertRows, ModelError>> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, proj) = rest.split_once(".mlp.experts.")?;
    let layer: usize = layer.parse().ok()?;
    let &[_, per, cols] = shape else {
        return None;
    };
    let bad = || ModelError::Tensor {
        name: name.to_string(),
        msg: format!("rows {first}+{rows} are not one expert's projection of {shape:?}"),
    };
    let (expert, proj) = match proj {
        "gate_up_proj"
            if per.is_multiple_of(2) && rows == per / 2 && first.is_multiple_of(rows) =>
        {
            let gate = first.is_multiple_of(per);
            (
                first / per,
                if gate {
                    ExpertProj::Gate
                } else {
                    ExpertProj::Up
                },
            )
        }
        "down_proj" if rows == per && first.is_multiple_of(per) => (first / per, ExpertProj::Down),
        "gate_up_proj" | "down_proj" => return Some(Err(bad())),
        _ => return None,
    };
    Some(Ok(ExpertRows {
        layer,
        expert,
        proj,
        rows,
        cols,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name of the release listed in DeepSeek-V4's spec maps to the state-dict name
    /// transformers loads it under.
    #[test]
    fn release_names_map_to_transformers_names() {
        for (release, hf) in [
            ("embed.weight", "model.embed_tokens.weight"),
            ("head.weight", "lm_head.weight"),
            ("norm.weight", "model.norm.weight"),
            ("hc_head_fn", "model.hc_head.hc_fn"),
            (
                "layers.0.attn_norm.weight",
                "model.layers.0.input_layernorm.weight",
            ),
            (
                "layers.0.ffn_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
            ),
            ("layers.2.hc_attn_base", "model.layers.2.attn_hc.base"),
            ("layers.2.hc_ffn_scale", "model.layers.2.ffn_hc.scale"),
            (
                "layers.1.attn.wq_a.weight",
                "model.layers.1.self_attn.q_a_proj.weight",
            ),
            (
                "layers.1.attn.q_norm.weight",
                "model.layers.1.self_attn.q_a_norm.weight",
            ),
            (
                "layers.1.attn.wq_b.weight",
                "model.layers.1.self_attn.q_b_proj.weight",
            ),
            (
                "layers.1.attn.wkv.weight",
                "model.layers.1.self_attn.kv_proj.weight",
            ),
            (
                "layers.1.attn.kv_norm.weight",
                "model.layers.1.self_attn.kv_norm.weight",
            ),
            (
                "layers.1.attn.wo_a.weight",
                "model.layers.1.self_attn.o_a_proj.weight",
            ),
            (
                "layers.1.attn.wo_b.weight",
                "model.layers.1.self_attn.o_b_proj.weight",
            ),
            ("layers.1.attn.attn_sink", "model.layers.1.self_attn.sinks"),
            (
                "layers.1.attn.compressor.wkv.weight",
                "model.layers.1.self_attn.compressor.kv_proj.weight",
            ),
            (
                "layers.1.attn.compressor.wgate.weight",
                "model.layers.1.self_attn.compressor.gate_proj.weight",
            ),
            (
                "layers.1.attn.compressor.ape",
                "model.layers.1.self_attn.compressor.position_bias",
            ),
            (
                "layers.1.attn.compressor.norm.weight",
                "model.layers.1.self_attn.compressor.kv_norm.weight",
            ),
            (
                "layers.1.attn.indexer.wq_b.weight",
                "model.layers.1.self_attn.compressor.indexer.q_b_proj.weight",
            ),
            (
                "layers.1.attn.indexer.weights_proj.weight",
                "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight",
            ),
            (
                "layers.1.attn.indexer.compressor.wkv.weight",
                "model.layers.1.self_attn.compressor.indexer.kv_proj.weight",
            ),
            (
                "layers.1.attn.indexer.compressor.ape",
                "model.layers.1.self_attn.compressor.indexer.position_bias",
            ),
            ("layers.0.ffn.gate.weight", "model.layers.0.mlp.gate.weight"),
            (
                "layers.2.ffn.gate.bias",
                "model.layers.2.mlp.gate.e_score_correction_bias",
            ),
            (
                "layers.0.ffn.gate.tid2eid",
                "model.layers.0.mlp.gate.tid2eid",
            ),
            (
                "layers.0.ffn.shared_experts.w1.weight",
                "model.layers.0.mlp.shared_experts.gate_proj.weight",
            ),
            (
                "layers.0.ffn.shared_experts.w2.weight",
                "model.layers.0.mlp.shared_experts.down_proj.weight",
            ),
        ] {
            assert_eq!(v4_transformers_name(release), hf, "{release}");
        }
    }

    /// The MTP layer (`mtp.0.*` after 43 decoder layers) is asked for as layer 43, its own parts
    /// under that layer; its routed experts are read from `mtp.0.ffn.experts.*`.
    #[test]
    fn mtp_names_are_the_layer_after_the_decoder_layers() {
        let stored = [
            "embed.weight",
            "layers.42.attn_norm.weight",
            "mtp.0.e_proj.weight",
            "mtp.0.e_proj.scale",
            "mtp.0.h_proj.weight",
            "mtp.0.enorm.weight",
            "mtp.0.hnorm.weight",
            "mtp.0.norm.weight",
            "mtp.0.hc_head_fn",
            "mtp.0.hc_head_scale",
            "mtp.0.attn.wq_a.weight",
            "mtp.0.attn_norm.weight",
            "mtp.0.hc_attn_fn",
        ];
        let names = V4ReleaseNames::detect(stored.into_iter()).unwrap();
        for (want, release) in [
            ("model.layers.43.e_proj.weight", "mtp.0.e_proj.weight"),
            ("model.layers.43.h_proj.weight", "mtp.0.h_proj.weight"),
            ("model.layers.43.enorm.weight", "mtp.0.enorm.weight"),
            ("model.layers.43.hnorm.weight", "mtp.0.hnorm.weight"),
            (
                "model.layers.43.shared_head.norm.weight",
                "mtp.0.norm.weight",
            ),
            ("model.layers.43.hc_head.hc_fn", "mtp.0.hc_head_fn"),
            ("model.layers.43.hc_head.hc_scale", "mtp.0.hc_head_scale"),
            (
                "model.layers.43.self_attn.q_a_proj.weight",
                "mtp.0.attn.wq_a.weight",
            ),
            (
                "model.layers.43.input_layernorm.weight",
                "mtp.0.attn_norm.weight",
            ),
            ("model.layers.43.attn_hc.fn", "mtp.0.hc_attn_fn"),
            (
                "model.layers.42.input_layernorm.weight",
                "layers.42.attn_norm.weight",
            ),
        ] {
            assert_eq!(names.stored(want), release, "{want}");
        }
        let gu = "model.layers.43.mlp.experts.gate_up_proj";
        let (w, d) = (32, 64);
        assert_eq!(
            names.expert(gu, &[6, 2 * w, d], 0, w).unwrap().unwrap(),
            ("mtp.0.ffn.experts.0.w1.weight".into(), w, d)
        );
    }

    #[test]
    fn stacked_expert_rows_are_per_expert_matrices() {
        let names = V4ReleaseNames::detect(["embed.weight"].into_iter()).unwrap();
        let gu = "model.layers.2.mlp.experts.gate_up_proj";
        let (w, d) = (32, 64);
        let at = |first, rows| names.expert(gu, &[6, 2 * w, d], first, rows);
        assert_eq!(
            at(2 * w * 3, w).unwrap().unwrap(),
            ("layers.2.ffn.experts.3.w1.weight".into(), w, d)
        );
        assert_eq!(
            at(2 * w * 3 + w, w).unwrap().unwrap().0,
            "layers.2.ffn.experts.3.w3.weight"
        );
        let down = names.expert("model.layers.2.mlp.experts.down_proj", &[6, d, w], 5 * d, d);
        assert_eq!(
            down.unwrap().unwrap(),
            ("layers.2.ffn.experts.5.w2.weight".into(), d, w)
        );
        assert!(at(5, w).unwrap().is_err(), "not an expert's boundary");
        assert!(names
            .expert("model.layers.2.mlp.gate.weight", &[6, 2, 3], 0, 1)
            .is_none());
    }

    #[test]
    fn scale_names() {
        assert_eq!(
            scale_name("layers.3.ffn.experts.7.w1.weight").as_deref(),
            Some("layers.3.ffn.experts.7.w1.scale")
        );
        assert_eq!(scale_name("layers.3.attn.attn_sink"), None);
    }

    #[test]
    fn e8m0_bytes() {
        assert_eq!(
            e8m0_values("s", &[127, 128, 120, 0]).unwrap(),
            [1.0, 2.0, 1.0 / 128.0, 2f32.powi(-127)]
        );
        let e = e8m0_values("layers.0.attn.wq_a.scale", &[127, 255]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `layers.0.attn.wq_a.scale`: scale 1 is 0xFF (NaN in F8_E8M0)"
        );
    }

    #[test]
    fn fp4_layouts() {
        assert!(fp4_codes("I8", &[4, 32], 4, 64));
        assert!(fp4_codes("U8", &[4, 32], 4, 64));
        assert!(fp4_codes("F4", &[4, 64], 4, 64));
        assert!(!fp4_codes("I8", &[4, 64], 4, 64));
        assert!(!fp4_codes("BF16", &[4, 32], 4, 64));
        assert!(!fp4_codes("I8", &[4, 24], 4, 48), "48 is not whole blocks");
    }
}
