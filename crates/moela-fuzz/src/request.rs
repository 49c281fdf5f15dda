//! Request bodies of the OpenAI-compatible API, planned as the handlers plan them.

use std::sync::{Arc, OnceLock};

use moela_engine::{EngineConfig, EngineHandle};
use moela_model::Model;
use moela_server::{AppState, PlanEndpoint, Settings};
use moela_text::{ChatFormat, Tokenizer};

/// Servers over the tiny V3 fixture: its own Jinja template, and DeepSeek V3.2's encoder (DSML
/// tool calls). Their engines idle; planning never reaches them.
fn states() -> &'static [AppState; 2] {
    static STATES: OnceLock<[AppState; 2]> = OnceLock::new();
    STATES.get_or_init(|| {
        let dir = crate::repo_root().join("tests/fixtures/models/v3");
        let ckpt = moela_loader::Checkpoint::open(&dir).expect("the V3 fixture opens");
        let model: Arc<Model> = Arc::new(ckpt.load_model(false).expect("the V3 fixture loads"));
        let tok = Tokenizer::from_dir(&dir).expect("the V3 fixture tokenizer loads");
        let cfg = EngineConfig {
            max_batch: 2,
            max_queue: 4,
            ctx: 1024,
            ..Default::default()
        };
        let state = |tok: Tokenizer| {
            let engine = EngineHandle::start(model.clone(), tok.clone(), cfg.clone());
            let vocab = model.config.vocab_size;
            AppState::new(engine, tok, vocab, vec![1], Settings::new("v3"))
        };
        [
            state(tok.clone()),
            state(tok.with_chat_format(ChatFormat::DeepseekV32)),
        ]
    })
}

/// Byte 0 picks the endpoint and the server (bit 2: Anthropic's `/v1/messages`, else bit 0:
/// `/v1/completions`, else `/v1/chat/completions`; bit 1: the DeepSeek V3.2 encoder, else the
/// Jinja template; the seeds use `0`–`7`); the rest is the request body.
pub fn request(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let state = &states()[usize::from(sel >> 1 & 1)];
    let endpoint = match (sel >> 2 & 1, sel & 1) {
        (1, _) => PlanEndpoint::Messages,
        (_, 1) => PlanEndpoint::Completion,
        _ => PlanEndpoint::Chat,
    };
    let _ = state.plan_body(endpoint, body);
}
