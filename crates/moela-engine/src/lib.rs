//! The engine: continuous batching over a model and its paged latent caches (`engine.rs`),
//! driven by the server's worker thread (`scheduler.rs`) or directly by the CLI
//! (`generate.rs`, `bench.rs`); sampling and stop conditions. Only the engine owns mutable KV
//! state.

pub mod bench;
pub mod draft;
pub mod engine;
pub mod generate;
mod mtp;
pub mod sampler;
pub mod scheduler;
mod sequence;
pub mod stop;

pub use bench::{peak_rss_bytes, run_bench, BenchConfig, BenchResult};
pub use draft::{ngram_draft, DraftConfig, DraftMode, Drafter, PromptLookup, DEFAULT_DRAFT_TOKENS};
pub use engine::{
    Constraint, Engine, EngineConfig, EngineStats, Event, Failure, FinishReason, Request,
    SubmitError, TokenEvent, TokenLogprob, Usage, PREFILL_CHUNK,
};
pub use generate::{drive, generate, greedy_tokens, perplexity, EngineError, GenerateOutput};
pub use moela_model::SamplingDefaults;
pub use sampler::{argmax, fill_sampling, Rng, Sampler, SamplingParams};
pub use scheduler::EngineHandle;
pub use sequence::token_nll;
pub use stop::{stop_token_ids, StopMatcher};
