//! The engine: sampling, stop conditions and the generate loop over a model and its latent
//! caches. Only the engine owns mutable KV state.

pub mod sampler;
pub mod stop;

pub use sampler::{argmax, Rng, Sampler, SamplingParams};
pub use stop::StopMatcher;
