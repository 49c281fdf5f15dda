//! Model files: GGUF, safetensors checkpoints (single file or sharded), `config.json`.

use moela_loader::gguf::{
    deepseek2_config_json, dense_config_json, is_deepseek_v3, tokenizer_json_from_gguf,
};
use moela_loader::{GgufFile, LoadOptions, ModelFiles};
use moela_model::Config;
use moela_text::Tokenizer;

use crate::{parts, scratch};

/// Models at most this many parameters are loaded in full (weights converted, shapes checked
/// against the config). A file can only hold as many weights as it has bytes, so this bounds
/// a target's memory without hiding any small file's path through the loader.
const MAX_LOAD_PARAMS: u64 = 1 << 22;

/// Everything a config allows computing, as the loader and engine compute it.
fn exercise_config(c: &Config) {
    let _ = c.validate();
    let _ = c.parameter_counts();
    let _ = c.moe_layer_count();
    for l in 0..c.num_hidden_layers.min(64) {
        let _ = c.is_moe_layer(l);
        let _ = c.attention_window(l);
    }
    let _ = c.yarn();
    if let Some(m) = c.mla() {
        let _ = m.qk_head_dim();
        let _ = m.latent_dim();
        let _ = m.cache_row();
        let _ = m.kv_b_rows(c.num_attention_heads);
        let _ = m.uk_t_rows(c.num_attention_heads);
        if let Some(ix) = &m.indexer {
            let _ = ix.q_rows();
        }
    }
    if let Some(moe) = &c.moe {
        let _ = moe.shared_width();
    }
    if let Some(g) = c.gqa() {
        let _ = g.kv_rows();
    }
    let _ = c.qk_head_dim();
    let _ = c.q_rows();
    let _ = c.o_cols();
    let _ = c.latent_dim();
    let _ = c.kv_values_per_token();
    let _ = c.kv_bytes_per_token(moela_model::KvType::F16);
    let _ = c.kv_b_f32_bytes();
    let _ = c.softmax_scale();
}

fn small_enough_to_load(c: &Config) -> bool {
    c.validate().is_ok()
        && c.parameter_counts()
            .is_ok_and(|(total, _)| total <= MAX_LOAD_PARAMS)
}

/// A model file or directory as `moela inspect --check` and `moela run` read it: listing,
/// dtype totals, the NaN scan, and a full load when the model is small.
fn exercise_model_files(path: &std::path::Path) {
    let Ok(files) = ModelFiles::open(path) else {
        return;
    };
    exercise_config(files.config());
    let _ = files.tensors();
    let _ = files.dtype_totals();
    let _ = files.file_bytes();
    let _ = files.scan_non_finite();
    if small_enough_to_load(files.config()) {
        let _ = files.load_model(&LoadOptions::default());
    }
}

/// GGUF bytes: the header, metadata and tensor table; the config and tokenizer rebuilt from the
/// metadata (and the tokenizer built and run); tensor data located, scanned and loaded.
pub fn gguf(data: &[u8]) {
    let dir = scratch::fresh_dir();
    let path = scratch::write(&dir, "model.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let _ = (file.version(), file.alignment(), file.data_offset());
    for (_, v) in file.metadata_entries() {
        let _ = v.to_json();
        let _ = v.type_description();
    }
    for t in file.tensors() {
        let _ = t.shape();
        let _ = t.n_elements();
        let _ = t.n_bytes();
        let _ = file.tensor_bytes(t);
    }
    let _ = file.architecture();
    let _ = is_deepseek_v3(&file);
    if let Ok(json) = deepseek2_config_json(&file) {
        if let Ok(c) = Config::from_hf_value(&json) {
            exercise_config(&c);
        }
    }
    if let Ok(json) = dense_config_json(&file) {
        if let Ok(c) = Config::from_hf_value(&json) {
            exercise_config(&c);
        }
    }
    if let Ok((tok_json, cfg_json)) = tokenizer_json_from_gguf(&file) {
        if let Ok(tok) = Tokenizer::from_json_str(&tok_json, Some(&cfg_json)) {
            if let Ok(ids) = tok.encode("Hello <think> 你好 world!", true) {
                let _ = tok.decode(&ids, false);
            }
        }
    }
    drop(file);
    exercise_model_files(&path);
}

/// File names the safetensors target writes its shards as (after config.json and the index).
pub const SHARD_NAMES: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

/// An HF checkpoint directory: parts `config.json`, `model.safetensors.index.json` (absent when
/// empty), then the shards. Without an index the first shard is `model.safetensors`; with one,
/// shards are written as [`SHARD_NAMES`] and the index says which holds what.
pub fn safetensors(data: &[u8]) {
    let p = parts(data);
    let dir = scratch::fresh_dir();
    scratch::write(&dir, "config.json", p[0]);
    let index = p.get(1).copied().unwrap_or_default();
    let shards = p.get(2..).unwrap_or_default();
    if index.is_empty() {
        if let Some(first) = shards.first() {
            scratch::write(&dir, "model.safetensors", first);
        }
    } else {
        scratch::write(&dir, "model.safetensors.index.json", index);
        for (name, shard) in SHARD_NAMES.iter().zip(shards) {
            scratch::write(&dir, name, shard);
        }
    }
    if let Ok(ckpt) = moela_loader::Checkpoint::open(&dir) {
        let _ = ckpt.file_bytes();
        for t in ckpt.tensor_infos() {
            let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n.is_some_and(|n| n <= 1 << 20) {
                let _ = ckpt.tensor_f32(&t.name, &t.shape);
                if let [rows, cols] = t.shape[..] {
                    let _ = ckpt.matrix(&t.name, rows, cols);
                }
            }
        }
    }
    exercise_model_files(&dir);
}

/// `config.json` bytes: parsed as the loader parses them, then every derived size computed.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::from_hf_json(text) else {
        return;
    };
    exercise_config(&c);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let again = Config::from_hf_value(&v);
        assert!(
            again.is_ok(),
            "from_hf_json accepted what from_hf_value refuses: {again:?}"
        );
    }
}
