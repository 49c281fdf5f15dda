//! The engine: sampling, stop conditions and the generate loop over a model and its latent
//! caches. Only the engine owns mutable KV state.

pub mod bench;
pub mod generate;
pub mod sampler;
pub mod scheduler;
pub mod stop;

pub use bench::{peak_rss_bytes, run_bench, BenchConfig, BenchResult};
pub use generate::{
    generate, greedy_tokens, perplexity, prefill, token_nll, EngineError, FinishReason,
    GenerateOutput, GenerateRequest,
};
pub use sampler::{argmax, Rng, Sampler, SamplingParams};
pub use scheduler::{
    Constraint, EngineConfig, EngineHandle, EngineStats, Event, Failure, Request, SubmitError,
    TokenEvent, TokenLogprob, Usage,
};
pub use stop::{stop_token_ids, StopMatcher};
