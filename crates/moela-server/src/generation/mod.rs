//! From a validated request to engine requests and back: [`plan`] turns a request into prompts
//! and settings, [`run`] starts one engine request per choice and turns the events of all
//! choices into one response or one SSE stream.

mod plan;
mod run;

pub use plan::{check_token_ids, Plan};
pub use run::execute;
