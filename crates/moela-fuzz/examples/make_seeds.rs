//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*` from the
//! committed fixtures: `cargo run -p moela-fuzz --example make_seeds`. The committed corpora
//! are these seeds plus what fuzzing found, minimized (docs/fuzzing.md).

use std::fs;
use std::path::{Path, PathBuf};

use moela_fuzz::{join_parts, repo_root};
use serde_json::{json, Value};

fn fixture(rel: &str) -> Vec<u8> {
    let p = repo_root().join("tests/fixtures").join(rel);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture(rel)).expect("fixture JSON")
}

struct Seeds {
    dir: PathBuf,
    n: usize,
}

impl Seeds {
    fn new(target: &str) -> Seeds {
        let dir = repo_root().join("fuzz/corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        for e in fs::read_dir(&dir).expect("corpus dir").flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                fs::remove_file(e.path()).expect("removing an old seed");
            }
        }
        Seeds { dir, n: 0 }
    }

    fn add(&mut self, label: &str, data: &[u8]) {
        let name = format!("seed-{:03}-{label}", self.n);
        fs::write(self.dir.join(name), data).expect("writing a seed");
        self.n += 1;
    }
}

/// A safetensors file: `(name, dtype, shape, bytes)` per tensor.
fn safetensors_file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("header");
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
        .collect()
}

fn gguf() {
    let mut s = Seeds::new("gguf");
    for f in ["all_types", "deepseek2_v2", "deepseek2_v3"] {
        s.add(f, &fixture(&format!("gguf/{f}.gguf")));
    }
}

fn safetensors() {
    let mut s = Seeds::new("safetensors");
    let a = safetensors_file(&[
        ("model.embed_tokens.weight", "F32", &[4, 8], f32_bytes(32)),
        ("model.norm.weight", "BF16", &[8], [0x80, 0x3f].repeat(8)),
        ("lm_head.weight", "F16", &[2, 8], [0x00, 0x3c].repeat(16)),
    ]);
    let b = safetensors_file(&[
        (
            "model.layers.0.mlp.experts.0.up_proj.weight",
            "F8_E4M3",
            &[4, 8],
            (0u8..32).collect(),
        ),
        (
            "model.layers.0.mlp.experts.0.up_proj.weight_scale_inv",
            "F32",
            &[1, 1],
            f32_bytes(1),
        ),
    ]);
    for model in ["v3", "v2_lite"] {
        let cfg = fixture(&format!("models/{model}/config.json"));
        s.add(&format!("{model}-single"), &join_parts(&[&cfg, b"", &a]));
    }
    let cfg = fixture("models/v3/config.json");
    let index = json!({
        "metadata": {"total_size": a.len() + b.len()},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00003.safetensors",
            "model.norm.weight": "model-00001-of-00003.safetensors",
            "lm_head.weight": "model-00001-of-00003.safetensors",
            "model.layers.0.mlp.experts.0.up_proj.weight": "model-00002-of-00003.safetensors",
            "model.layers.0.mlp.experts.0.up_proj.weight_scale_inv": "model-00002-of-00003.safetensors",
        }
    });
    let index = serde_json::to_vec_pretty(&index).expect("index");
    s.add("v3-sharded", &join_parts(&[&cfg, &index, &a, &b]));
    let cfg = fixture("models/llama/config.json");
    s.add("llama-single", &join_parts(&[&cfg, b"", &a]));
}

fn model_dirs() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(repo_root().join("tests/fixtures/models"))
        .expect("fixture models")
        .flatten()
        .filter(|e| e.path().join("config.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn config() {
    let mut s = Seeds::new("config");
    for m in model_dirs() {
        s.add(&m, &fixture(&format!("models/{m}/config.json")));
    }
}

fn chat_template() {
    let mut s = Seeds::new("chat_template");
    let templates = fixture_json("text/golden_templates.json");
    let cases = templates["cases"].as_array().expect("cases");
    let config = fixture("models/v3/tokenizer_config.json");
    let tpl_dir = repo_root().join("tests/fixtures/text/templates");
    // Each template once, with a case of it that has tools or extra variables if there is one.
    let mut seen = Vec::new();
    for case in cases {
        let name = case["template"].as_str().unwrap_or_default().to_string();
        if seen.contains(&name) && case["tools"].is_null() {
            continue;
        }
        if seen.iter().filter(|n| **n == name).count() >= 2 {
            continue;
        }
        seen.push(name.clone());
        let tpl = fs::read(tpl_dir.join(&name)).unwrap_or_default();
        let messages = serde_json::to_vec(&case["messages"]).expect("messages");
        let opts = serde_json::to_vec(&json!({
            "add_generation_prompt": case["add_generation_prompt"],
            "tools": case["tools"],
            "extra": case["extra"],
        }))
        .expect("options");
        let label = name.trim_end_matches(".jinja");
        s.add(label, &join_parts(&[&config, &messages, &opts, &tpl]));
    }
    // DeepSeek's own encoders: every tenth golden conversation, with a config without template.
    let enc = fixture_json("text/golden_chat_encoding.json");
    for (i, r) in enc["renders"]
        .as_array()
        .expect("renders")
        .iter()
        .enumerate()
    {
        if i % 10 != 0 {
            continue;
        }
        let messages = serde_json::to_vec(&r["messages"]).expect("messages");
        let o = &r["options"];
        let opts = serde_json::to_vec(&json!({
            "add_generation_prompt": o.get("add_generation_prompt").unwrap_or(&json!(true)),
            "tools": r.get("tools").or(o.get("tools")).unwrap_or(&Value::Null),
            "thinking": o.get("thinking").unwrap_or(&Value::Null),
            "reasoning_effort": o.get("reasoning_effort").unwrap_or(&Value::Null),
        }))
        .expect("options");
        s.add("deepseek-encoders", &join_parts(&[b"{}", &messages, &opts]));
    }
    let llama = fixture("models/llama/tokenizer_config.json");
    s.add("llama-config", &llama);
}

fn request() {
    let mut s = Seeds::new("request");
    let weather_tool = json!({"type": "function", "function": {"name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1}}, "required": ["city"]}}});
    let chat = [
        json!({"model": "v3", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}),
        json!({"messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
            "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7,
            "stop": ["\n\n", "END"], "n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.1,
            "repetition_penalty": 1.1, "stream": true, "stream_options": {"include_usage": true},
            "logprobs": true, "top_logprobs": 3, "max_completion_tokens": 16}),
        json!({"messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [weather_tool], "tool_choice": "auto", "parallel_tool_calls": false}),
        json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": [weather_tool],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": [weather_tool],
            "tool_choice": "required"}),
        json!({"messages": [{"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "21 C"}], "tools": [weather_tool]}),
        json!({"messages": [{"role": "user", "content": "JSON please"}],
            "response_format": {"type": "json_object"}, "max_tokens": 32}),
        json!({"messages": [{"role": "user", "content": "A person"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                    "age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
                    "required": ["name", "age"], "additionalProperties": false}}}}),
        json!({"messages": [{"role": "user", "content": "Think"}], "thinking": {"type": "enabled"},
            "reasoning_effort": "high", "chat_template_kwargs": {"thinking": true}}),
        json!({"messages": [{"role": "user", "content": "Go on"},
            {"role": "assistant", "content": "Once upon", "prefix": true}], "ignore_eos": true}),
    ];
    for (i, body) in chat.iter().enumerate() {
        let b = serde_json::to_vec(body).expect("body");
        let sel = if i % 3 == 2 { b'2' } else { b'0' };
        s.add("chat", &[&[sel][..], &b].concat());
    }
    let completions = [
        json!({"model": "v3", "prompt": "Once upon a time", "max_tokens": 8}),
        json!({"prompt": ["a", "b"], "n": 2, "echo": true, "logprobs": 2, "stop": "."}),
        json!({"prompt": [1, 2, 3], "best_of": 1, "suffix": "", "temperature": 0}),
        json!({"prompt": [[1, 2], [3]], "stream": true, "seed": 18446744073709551615u64}),
        json!({"prompt": "x", "response_format": {"type": "json_object"}}),
    ];
    for (i, body) in completions.iter().enumerate() {
        let b = serde_json::to_vec(body).expect("body");
        let sel = if i % 2 == 1 { b'3' } else { b'1' };
        s.add("completion", &[&[sel][..], &b].concat());
    }
    let anthropic_tool = json!({"name": "get_weather", "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}});
    let messages = [
        json!({"model": "v3", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}),
        json!({"max_tokens": 16, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9, "top_k": 20, "stream": true}),
        json!({"max_tokens": 32, "tools": [anthropic_tool], "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
        json!({"max_tokens": 32, "tools": [anthropic_tool], "messages": [
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
                "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "21 C",
                "is_error": false}]}]}),
        json!({"max_tokens": 64, "thinking": {"type": "enabled", "budget_tokens": 32},
            "messages": [{"role": "user", "content": "Think"},
                {"role": "assistant", "content": "Well,"}]}),
    ];
    for (i, body) in messages.iter().enumerate() {
        let b = serde_json::to_vec(body).expect("body");
        let sel = if i % 2 == 1 { b'6' } else { b'4' };
        s.add("messages", &[&[sel][..], &b].concat());
    }
}

fn stream() {
    let mut s = Seeds::new("stream");
    let parsing = fixture_json("text/golden_parsing.json");
    let text_seed = |flags: u8, text: &str| [&[flags][..], text.as_bytes()].concat();
    for (i, case) in parsing["reasoning"]
        .as_array()
        .expect("reasoning")
        .iter()
        .enumerate()
    {
        let started = u8::from(case["started_in_reasoning"].as_bool() == Some(true));
        let chunk = (i as u8 % 4) << 4;
        let text = case["text"].as_str().unwrap_or_default();
        s.add("reasoning", &text_seed(started | chunk, text));
    }
    for case in parsing["tool_calls"].as_array().expect("tool_calls") {
        s.add(
            "tool-calls",
            &text_seed(0x30, case["text"].as_str().unwrap_or_default()),
        );
    }
    let enc = fixture_json("text/golden_chat_encoding.json");
    for case in enc["completions"].as_array().expect("completions") {
        let started = u8::from(case["opens_reasoning"].as_bool() == Some(true));
        let text = case["completion"].as_str().unwrap_or_default();
        s.add("dsml", &text_seed(started | 0x20, text));
    }
    // Token ids of some texts in the fixture tokenizer (flag bit 2), with and without skipping
    // special tokens.
    let tok = moela_text::Tokenizer::from_dir(&repo_root().join("tests/fixtures/models/v3"))
        .expect("fixture tokenizer");
    let texts = [
        "Hello, 世界! 🦀 <think>x</think> done",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "<｜begin▁of▁sentence｜>naïve café\n\n  tabs\t",
    ];
    for (i, t) in texts.iter().enumerate() {
        let ids = tok.encode(t, false).expect("encode");
        let mut b = vec![4 | (i as u8 & 1) << 1];
        for id in ids {
            b.extend_from_slice(&(id as u16).to_le_bytes());
        }
        s.add("ids", &b);
    }
}

fn main() {
    gguf();
    safetensors();
    config();
    chat_template();
    request();
    stream();
    let root: &Path = &repo_root().join("fuzz/corpus");
    for t in moela_fuzz::TARGETS {
        let n = fs::read_dir(root.join(t.0)).map(|d| d.count()).unwrap_or(0);
        println!("{}: {n} files", t.0);
    }
}
