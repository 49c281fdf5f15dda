//! `moela`: the command-line interface. Logic lives in the library crates; this file parses
//! arguments, wires loader + text + engine together and prints.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use moela_engine::{
    fill_sampling, generate, perplexity, DraftConfig, DraftMode, Engine, EngineConfig, EngineError,
    Request, SamplingDefaults, SamplingParams,
};
use moela_kernels::{DType, Placement};
use moela_loader::{LoadOptions, ModelFiles};
use moela_model::{KvType, Model};
use moela_text::{split_reasoning, ChatFormat, ChatMessage, RenderOptions, Role, Tokenizer};

/// Activation buffers of several MB per layer are reused rather than returned to the kernel
/// and faulted back in zeroed (see ARCHITECTURE.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "moela",
    version,
    about = "Inference for DeepSeek MLA + MoE models"
)]
struct Cli {
    /// Worker threads for compute, the calling thread included (default: the cores this
    /// process may use: its CPU affinity mask, capped by a cgroup CPU quota).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of one prompt (chat template applied unless --raw).
    Generate(GenerateArgs),
    /// Multi-turn chat; reads one user turn per line when stdin is not a terminal.
    Chat(ChatArgs),
    /// Per-token negative log-likelihood and perplexity of a text file.
    Perplexity(PerplexityArgs),
    /// Summary of a checkpoint: config, parameters, dtypes, memory, KV-cache bytes per token.
    Inspect(InspectArgs),
    /// Prefill and decode speed, time to first token, peak memory, load time.
    Bench(BenchArgs),
    /// Write a DeepSeek model as a deepseek2 (V2/V3) or deepseek32 (V3.2) GGUF file (llama.cpp loads it) with weights in one type.
    Quantize(QuantizeArgs),
    /// Serve an OpenAI- and DeepSeek-compatible HTTP API (SIGTERM drains, then exits).
    Serve(ServeArgs),
    /// Download a model from the Hugging Face hub into the HF cache ($HF_HOME); then
    /// `--model ORG/NAME` finds it there.
    Pull(PullArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// HF checkpoint directory (config.json, safetensors, tokenizer files), a GGUF file, or
    /// ORG/NAME[@REV] pulled into the HF cache (`moela pull`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Context length in tokens (prompt + generated); default: the model's maximum.
    #[arg(long)]
    ctx: Option<usize>,
    /// Quantize weights while loading: q4_0, q8_0, q4_k, q6_k, mxfp4, f16, bf16 or f32.
    #[arg(long, value_parser = parse_dtype)]
    quant: Option<DType>,
    /// KV cache type: f32, f16 or q8_0 (8-bit, about half of f16; default: f32 for safetensors
    /// checkpoints, f16 for GGUF).
    #[arg(long)]
    kv_type: Option<KvType>,
    /// Keep every weight matrix in the file mapping, in the file's layout, paged in on demand;
    /// by default Q4_0/Q8_0 matrices get a repacked copy in RAM where this CPU's kernels run
    /// faster on it, unless the weights would not fit in the memory budget (then the routed
    /// experts or everything stay in the mapping, with a note; see --memory-budget).
    #[arg(long)]
    mmap_only: bool,
    /// Memory the weights may take, in bytes (suffixes K, M, G, T: powers of 1024); default:
    /// what is available at load less a margin. A MoE model larger than this keeps its routed
    /// experts in the file mapping and copies the most used ones into RAM within what is left.
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
}

/// A byte count: digits with an optional fraction and a K/M/G/T suffix (1024-based; "KiB",
/// "GB" etc. read the same).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (expected K, M, G or T)"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 6G, 6442450944)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as u64)
}

fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    let all = DType::ALL.iter().filter(|d| d.ggml_type().is_some());
    all.clone()
        .find(|d| d.name().eq_ignore_ascii_case(s))
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = all.map(|d| d.name()).collect();
            format!("unknown type {s:?} (expected one of {})", names.join(", "))
        })
}

#[derive(Args)]
struct SamplingArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy. Default: the model's recommendation
    /// (generation_config.json, GGUF general.sampling.*), else 0.
    #[arg(long)]
    temperature: Option<f32>,
    /// Default: the model's recommendation, else 1 (off).
    #[arg(long)]
    top_p: Option<f32>,
    /// 0 = off. Default: the model's recommendation, else 0.
    #[arg(long)]
    top_k: Option<usize>,
    /// 0 = off. Default: the model's recommendation, else 0.
    #[arg(long)]
    min_p: Option<f32>,
    /// 1 = off. Default: the model's recommendation, else 1.
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text is generated (repeatable); the stop text is not printed.
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// The values given on the command line.
    fn explicit(&self) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
        }
    }

    /// Flags first, then the model's recommendation (`model`), then greedy without penalties.
    fn params(&self, model: &SamplingDefaults) -> SamplingParams {
        let base = SamplingParams {
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        };
        fill_sampling(model, &self.explicit(), base)
    }
}

#[derive(Args)]
struct DraftArgs {
    /// Speculative decoding: `mtp` drafts with the model's own Multi-Token Prediction layer,
    /// `ngram` the continuation of the latest earlier occurrence of the last tokens (prompt
    /// lookup); the model verifies the drafts in the same step. `none` decodes one token per
    /// step. Output tokens are the same either way. Default: `mtp` when the model has an MTP
    /// layer, else `none`.
    #[arg(long)]
    draft: Option<DraftMode>,
    /// Tokens drafted per step, at most.
    #[arg(long, default_value_t = moela_engine::DEFAULT_DRAFT_TOKENS)]
    draft_tokens: usize,
}

impl DraftArgs {
    /// The drafting `model` gets: the flag, else MTP where the model has an MTP layer. `mtp`
    /// asked of a model without one decodes without drafts, with a note.
    fn config(&self, model: &moela_model::Model) -> DraftConfig {
        let mode = match self.draft {
            Some(DraftMode::Mtp) if !model.has_mtp() => {
                eprintln!("note: this model has no MTP layer weights: decoding without drafts");
                DraftMode::None
            }
            Some(m) => m,
            None if model.has_mtp() => DraftMode::Mtp,
            None => DraftMode::None,
        };
        DraftConfig {
            mode,
            tokens: self.draft_tokens,
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    /// System prompt (chat template only).
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt as is: no chat template (the tokenizer's own BOS rule applies).
    #[arg(long)]
    raw: bool,
    /// After the streamed text, print one JSON object: text, token_ids, reasoning, finish_reason,
    /// usage, seconds (prompt to last token) and draft (mode, drafted/accepted tokens, decode rows).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Print {"n_tokens", "ppl", "nll": [...]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require this key as "Authorization: Bearer KEY".
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Require one of the keys in this file (lines `KEY` or `NAME KEY`).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting for a batch slot; beyond this the server answers 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Price table (JSON) for per-request cost in `usage` and per-key cost on /metrics.
    #[arg(long)]
    price_file: Option<PathBuf>,
    /// Model id in /v1/models and responses (default: the model directory's or file's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Seconds SIGTERM waits for running requests.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Open client connections at most (default: 1,024, less where the open-file limit is lower).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers; an idle keep-alive connection is
    /// closed after as long.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client has to send a request's body (408 after).
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    #[command(flatten)]
    draft: DraftArgs,
}

#[derive(Args)]
struct QuantizeArgs {
    /// HF checkpoint directory or GGUF file to read.
    #[arg(long)]
    model: PathBuf,
    /// Weight type: q4_0, q8_0, q4_k, q6_k, mxfp4, f16, bf16 or f32.
    #[arg(long = "type", value_parser = parse_dtype)]
    dtype: DType,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time for the decode measurement.
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Cache length when decoding starts (default: right after the prompt).
    #[arg(long, default_value_t = 0)]
    context: usize,
    /// Timed runs of each measurement; the results are their mean (± sample sd).
    #[arg(long, short = 'r', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repetitions: u64,
    /// Skip the untimed warm-up (a prefill of the same length, one decoded token).
    #[arg(long)]
    no_warmup: bool,
    /// Sequences decoded together (one token each per step, as the server's continuous
    /// batching runs them); decode tok/s is their aggregate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    draft: DraftArgs,
    /// Verify K random drafted tokens in every decode step (nearly always rejected): decode
    /// tok/s then measures a (K+1)-row step against `--verify-tokens 0`'s 1-row step, the cost
    /// side of speculative decoding. Replaces --draft.
    #[arg(long, default_value_t = 0)]
    verify_tokens: usize,
}

#[derive(Args)]
struct PullArgs {
    /// ORG/NAME or ORG/NAME@REVISION (a branch, tag or commit; default main).
    model: String,
    /// Fetch only the files matching this glob (repeatable; `*` also matches `/`), e.g.
    /// '*Q4_K_M.gguf'. Default: config, generation config, tokenizer files and safetensors
    /// weights, or a repository's only .gguf file.
    #[arg(long)]
    include: Vec<String>,
}

#[derive(Args)]
struct InspectArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Also read every stored tensor and fail if any value is NaN or infinite.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::FAILURE;
        }
        moela_kernels::set_num_threads(n);
    }
    let result = match cli.command {
        Command::Generate(a) => cmd_generate(a),
        Command::Chat(a) => cmd_chat(a),
        Command::Perplexity(a) => cmd_perplexity(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Quantize(a) => cmd_quantize(a),
        Command::Serve(a) => cmd_serve(a),
        Command::Pull(a) => cmd_pull(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The model's directory or file, and its hub id when it came from the HF cache.
struct ModelPath {
    path: PathBuf,
    hub: Option<moela_hub::RepoRef>,
}

/// `--model`, else `$MOELA_MODEL`, else the built-in model. A value that is no existing path
/// but reads as ORG/NAME[@REV] is looked up in the HF cache (`moela pull` puts models there).
fn model_path(arg: &Option<PathBuf>) -> Result<ModelPath> {
    let given = arg
        .clone()
        .or_else(|| std::env::var_os("MOELA_MODEL").map(PathBuf::from));
    let path = match given {
        Some(p) => p,
        None => {
            let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/moela-demo");
            if !builtin.join("config.json").exists() {
                bail!("no model given: pass --model DIR (an HF checkpoint directory) or set MOELA_MODEL");
            }
            builtin
        }
    };
    let repo = path
        .to_str()
        .and_then(|s| moela_hub::RepoRef::parse(s).ok());
    let Some(repo) = repo.filter(|_| !path.exists()) else {
        return Ok(ModelPath { path, hub: None });
    };
    let cache = moela_hub::cache_dir()?;
    match moela_hub::resolve_cached(&cache, &repo) {
        Ok(found) => Ok(ModelPath {
            path: found.path,
            hub: Some(repo),
        }),
        Err(e @ moela_hub::HubError::NotCached { .. }) => {
            bail!("{}: no such file or directory, and {e}", path.display())
        }
        Err(e) => Err(e.into()),
    }
}

fn cmd_pull(a: PullArgs) -> Result<()> {
    let repo = moela_hub::RepoRef::parse(&a.model)?;
    let settings = moela_hub::HubSettings::from_env()?;
    let opts = moela_hub::PullOptions {
        selection: match a.include.is_empty() {
            true => moela_hub::Selection::Default,
            false => moela_hub::Selection::Include(a.include),
        },
        progress: std::io::stderr().is_terminal(),
    };
    let pulled = moela_hub::pull(&settings, &repo, &opts)?;
    let (new, had): (Vec<_>, Vec<_>) = pulled.files.iter().partition(|f| f.downloaded);
    println!(
        "{repo} (commit {}): {} files, {} downloaded ({}), {} already in the cache",
        pulled.commit,
        pulled.files.len(),
        new.len(),
        bytes(new.iter().map(|f| f.size).sum()),
        had.len()
    );
    println!("{}", pulled.snapshot.display());
    Ok(())
}

struct Loaded {
    model: Arc<Model>,
    tokenizer: Tokenizer,
    ctx: usize,
    /// The model's recommended sampling.
    sampling: SamplingDefaults,
    /// How the weights were placed (after the memory check).
    placement: Placement,
}

fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = model_path(&args.model)?.path;
    let files = ModelFiles::open(&path)?;
    let tokenizer = match &files {
        ModelFiles::Hf(_) => Tokenizer::from_dir(&path)?,
        ModelFiles::Gguf(g) => {
            let (tok, cfg) = g.tokenizer_json()?;
            Tokenizer::from_json_str(&tok, Some(&cfg))
                .with_context(|| format!("{}: tokenizer metadata", path.display()))?
        }
    };
    // DeepSeek V3.2 and V4 ship a Python encoder, not a Jinja template: Moela's native one.
    let tokenizer = match ChatFormat::for_model_type(files.config().model_type.as_str()) {
        Some(format) => tokenizer.with_chat_format(format),
        None => tokenizer,
    };
    let max = files.config().max_position_embeddings;
    let ctx = match args.ctx {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(c) if c > max => bail!("--ctx {c} exceeds the model's max_position_embeddings {max}"),
        Some(c) => c,
        None => max,
    };
    let requested = if args.mmap_only {
        Placement::InPlace
    } else {
        Placement::Fastest
    };
    let opts = LoadOptions {
        progress: std::io::stderr().is_terminal(),
        quant: args.quant,
        kv_type: args.kv_type,
        placement: requested,
        memory_budget: args.memory_budget,
    };
    let choice = files.placement(&opts);
    let placement = choice.placement;
    let budget = choice.budget.map_or("unknown".into(), bytes);
    let weights = bytes(choice.footprint.weights);
    match placement {
        Placement::InPlace if requested != Placement::InPlace => eprintln!(
            "note: weights stay in the file mapping, paged in on demand: they ({weights}) would not fit in the memory budget ({budget})"
        ),
        Placement::Resident { expert_budget } => eprintln!(
            "note: the weights ({weights}) do not fit in the memory budget ({budget}): the routed experts ({}) stay in the file mapping and the most used get copies in RAM, {} at most",
            bytes(choice.footprint.experts),
            bytes(expert_budget)
        ),
        _ => {}
    }
    let sampling = files.sampling_defaults()?;
    let model = Arc::new(files.load_placed(&opts, placement)?);
    Ok(Loaded {
        model,
        tokenizer,
        ctx,
        sampling,
        placement,
    })
}

impl Loaded {
    fn stop_ids(&self) -> Vec<u32> {
        moela_engine::stop_token_ids(&self.tokenizer, &self.model.config)
    }

    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<(Vec<u32>, bool)> {
        if self.tokenizer.chat_format().is_none() {
            bail!("the tokenizer has no chat template (use --raw to send the prompt as is)");
        }
        let opts = RenderOptions {
            add_generation_prompt: true,
            ..Default::default()
        };
        let p = self.tokenizer.apply_chat_template(messages, &opts)?;
        Ok((p.ids, p.opens_reasoning))
    }

    /// Says once which of the model's recommended sampling values apply (those no flag set).
    fn announce_sampling(&self, s: &SamplingArgs) {
        let e = s.explicit();
        let used = SamplingDefaults {
            temperature: self
                .sampling
                .temperature
                .filter(|_| e.temperature.is_none()),
            top_k: self.sampling.top_k.filter(|_| e.top_k.is_none()),
            top_p: self.sampling.top_p.filter(|_| e.top_p.is_none()),
            min_p: self.sampling.min_p.filter(|_| e.min_p.is_none()),
            repetition_penalty: self
                .sampling
                .repetition_penalty
                .filter(|_| e.repetition_penalty.is_none()),
        };
        if !used.is_empty() {
            eprintln!(
                "sampling: {} (the model's defaults; flags override)",
                used.describe()
            );
        }
    }

    fn request(&self, prompt: Vec<u32>, s: &SamplingArgs) -> Request {
        Request {
            max_tokens: s.max_tokens,
            sampling: s.params(&self.sampling),
            stop: s.stop.clone(),
            stop_token_ids: self.stop_ids(),
            ..Request::new(prompt, 0)
        }
    }

    /// The engine the CLI's commands run through: one sequence at a time, the whole context.
    fn engine(&self, draft: DraftConfig) -> Engine {
        let config = EngineConfig {
            max_batch: 1,
            max_queue: 1,
            ctx: self.ctx,
            draft,
            ..EngineConfig::default()
        };
        Engine::new(self.model.clone(), Some(self.tokenizer.clone()), config)
    }
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let m = load(&a.model)?;
    m.announce_sampling(&a.sampling);
    let (prompt, in_reasoning) = if a.raw {
        (m.tokenizer.encode(&a.prompt, true)?, false)
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new(Role::System, s.as_str()));
        }
        msgs.push(ChatMessage::new(Role::User, a.prompt.as_str()));
        m.chat_prompt(&msgs)?
    };
    let req = m.request(prompt, &a.sampling);
    let mut out = std::io::stdout().lock();
    let draft = a.draft.config(&m.model);
    let mut engine = m.engine(draft);
    let started = std::time::Instant::now();
    let res = generate(&mut engine, req, &mut |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })
    .map_err(engine_error)?;
    let seconds = started.elapsed().as_secs_f64();
    writeln!(out)?;
    if a.json {
        let stats = engine.stats();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let (reasoning, content) = split_reasoning(&res.text, in_reasoning);
        let mut obj = serde_json::json!({
            "text": content,
            "token_ids": res.token_ids,
            "finish_reason": res.finish_reason.as_str(),
            "usage": {
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
                "total_tokens": res.prompt_tokens + res.completion_tokens,
            },
            "seconds": seconds,
            "draft": {
                "mode": draft.mode.as_str(),
                "drafted_tokens": count(&stats.drafted_tokens),
                "accepted_tokens": count(&stats.accepted_tokens),
                "decode_rows": count(&stats.decode_rows),
            },
        });
        if let Some(r) = reasoning {
            obj["reasoning"] = serde_json::Value::String(r);
        }
        writeln!(out, "{obj}")?;
    }
    Ok(())
}

fn engine_error(e: EngineError) -> anyhow::Error {
    anyhow::Error::new(e)
}

fn cmd_chat(a: ChatArgs) -> Result<()> {
    let m = load(&a.model)?;
    m.announce_sampling(&a.sampling);
    let interactive = std::io::stdin().is_terminal();
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::new(Role::System, s.as_str()));
    }
    if interactive {
        eprintln!("moela chat — type a message, /reset to start over, /exit or Ctrl-D to quit");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    // One engine for the whole conversation: each turn reuses the cached prefix of the last.
    let mut engine = m.engine(a.draft.config(&m.model));
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let line = line.trim_end_matches('\r');
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" if interactive => break,
            "/reset" if interactive => {
                history.retain(|m| m.role == Role::System);
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new(Role::User, line));
        let (prompt, in_reasoning) = m.chat_prompt(&history)?;
        let req = m.request(prompt, &a.sampling);
        let mut out = std::io::stdout().lock();
        let res = match generate(&mut engine, req, &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }) {
            Ok(r) => r,
            Err(EngineError::PromptTooLong { prompt, ctx }) if interactive => {
                eprintln!("\nthe conversation ({prompt} tokens) no longer fits the context ({ctx}); use /reset");
                history.pop();
                continue;
            }
            Err(e) => return Err(engine_error(e)),
        };
        writeln!(out)?;
        let (_, content) = split_reasoning(&res.text, in_reasoning);
        history.push(ChatMessage::new(Role::Assistant, content));
    }
    Ok(())
}

fn cmd_perplexity(a: PerplexityArgs) -> Result<()> {
    let m = load(&a.model)?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("{}", a.file.display()))?;
    let tokens = m.tokenizer.encode(&text, true)?;
    let nll = perplexity(&mut m.engine(DraftConfig::default()), &tokens).map_err(engine_error)?;
    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
    let ppl = mean.exp();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "n_tokens": tokens.len(), "ppl": ppl, "nll": nll })
        );
    } else {
        println!(
            "tokens: {}  scored: {}  mean NLL: {mean:.6}  perplexity: {ppl:.4}",
            tokens.len(),
            nll.len()
        );
    }
    Ok(())
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    if a.max_batch == 0 || a.max_queue == 0 || a.max_connections == Some(0) {
        bail!("--max-batch, --max-queue and --max-connections must be at least 1");
    }
    if a.header_timeout == 0 || a.body_timeout == 0 {
        bail!("--header-timeout and --body-timeout must be at least 1 second");
    }
    let model = model_path(&a.model.model)?;
    let dir = model.path;
    let name = match (a.served_model_name, model.hub) {
        (Some(n), _) => n,
        (None, Some(repo)) => repo.id,
        (None, None) => dir
            .canonicalize()
            .ok()
            .and_then(|d| match d.is_file() {
                true => d.file_stem().map(|n| n.to_string_lossy().into_owned()), // x.gguf → x
                false => d.file_name().map(|n| n.to_string_lossy().into_owned()),
            })
            .unwrap_or_else(|| "moela".into()),
    };
    let m = load(&a.model)?;
    let opts = moela_server::ServeOptions {
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        api_key_file: a.api_key_file,
        price_file: a.price_file,
        model_name: name,
        engine: moela_engine::EngineConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            ctx: m.ctx,
            draft: a.draft.config(&m.model),
            ..Default::default()
        },
        max_body_bytes: moela_server::DEFAULT_MAX_BODY_BYTES,
        drain_timeout: std::time::Duration::from_secs(a.drain_timeout),
        limits: moela_server::ConnLimits {
            max_connections: a
                .max_connections
                .unwrap_or_else(moela_server::default_max_connections),
            header_timeout: std::time::Duration::from_secs(a.header_timeout),
        },
        body_timeout: std::time::Duration::from_secs(a.body_timeout),
        sampling: m.sampling,
    };
    if !m.sampling.is_empty() {
        eprintln!(
            "sampling: {} (the model's defaults for requests that do not set them)",
            m.sampling.describe()
        );
    }
    moela_server::serve(opts, m.model, m.tokenizer)?;
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let dir = model_path(&a.model)?.path;
    let ck = ModelFiles::open(&dir)?;
    let c = ck.config();
    // Every derived number from the config's checked methods (validated on load).
    let (total, active) = c.parameter_counts()?;
    println!("model:        {}", dir.display());
    println!("model_type:   {}", c.model_type.as_str());
    println!(
        "shape:        {} layers, hidden {}, {} heads, vocab {}, max positions {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.vocab_size,
        c.max_position_embeddings
    );
    match &c.attention {
        moela_model::Attention::Mla(m) => println!(
            "attention:    MLA, q_lora_rank {}, kv_lora_rank {}, qk_nope {}, qk_rope {}, v_head {}, softmax scale {:.8}",
            m.q_lora_rank.map_or("none".to_string(), |r| r.to_string()),
            m.kv_lora_rank,
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim,
            c.softmax_scale()?
        ),
        moela_model::Attention::Gqa(g) => println!(
            "attention:    GQA, {} query / {} KV heads of {}, biases q/k/v {} o {}, sliding window {}",
            c.num_attention_heads,
            g.num_key_value_heads,
            g.head_dim,
            g.qkv_bias,
            g.o_bias,
            g.sliding_window.as_ref().map_or("none".to_string(), |w| format!(
                "{} on {} layers",
                w.size,
                w.layers.iter().filter(|&&s| s).count()
            ))
        ),
        moela_model::Attention::V4(v) => {
            println!(
                "attention:    DeepSeek-V4, {} query heads of {} and one shared K=V head (RoPE on the last {}), q_lora_rank {}, output {} groups × {}, window {}, softmax scale {:.8}",
                c.num_attention_heads,
                v.head_dim,
                v.qk_rope_head_dim,
                v.q_lora_rank,
                v.o_groups,
                v.o_lora_rank,
                v.sliding_window,
                c.softmax_scale()?
            );
            inspect_v4(c, v);
        }
    }
    if let Some(ix) = c.mla().and_then(|m| m.indexer.as_ref()) {
        println!(
            "indexer:      DSA, {} heads of {} (RoPE on the leading {}), top {} keys per query",
            ix.index_n_heads,
            ix.index_head_dim,
            c.mla().map_or(0, |m| m.qk_rope_head_dim),
            ix.index_topk
        );
    }
    match &c.rope_scaling {
        Some(moela_model::RopeScaling::Yarn(y)) => println!(
            "rope:         theta {}, YaRN factor {} (orig {}), beta {}/{}, mscale {}/{}",
            c.rope_theta,
            y.factor,
            y.original_max_position_embeddings,
            y.beta_fast,
            y.beta_slow,
            y.mscale,
            y.mscale_all_dim
        ),
        Some(moela_model::RopeScaling::Llama3(l)) => println!(
            "rope:         theta {}, Llama-3 factor {} (orig {}), low/high freq factors {}/{}",
            c.rope_theta,
            l.factor,
            l.original_max_position_embeddings,
            l.low_freq_factor,
            l.high_freq_factor
        ),
        Some(moela_model::RopeScaling::Linear { factor }) => {
            println!(
                "rope:         theta {}, linear factor {factor}",
                c.rope_theta
            )
        }
        Some(moela_model::RopeScaling::FreqFactors(v)) => println!(
            "rope:         theta {}, {} per-frequency factors (GGUF rope_freqs)",
            c.rope_theta,
            v.len()
        ),
        None => println!("rope:         theta {}, no scaling", c.rope_theta),
    }
    match &c.moe {
        Some(m) => println!(
            "experts:      {} routed (width {}), {} shared, top-{} by {:?}/{:?}, groups {}/{}, norm_topk_prob {}, scaling {}; dense layers: {}",
            m.n_routed_experts,
            m.moe_intermediate_size,
            m.n_shared_experts,
            m.num_experts_per_tok,
            m.topk_method,
            m.scoring_func,
            m.topk_group,
            m.n_group,
            m.norm_topk_prob,
            m.routed_scaling_factor,
            (0..c.num_hidden_layers).filter(|&l| !c.is_moe_layer(l)).map(|l| l.to_string()).collect::<Vec<_>>().join(",")
        ),
        None => println!("experts:      none (dense, width {})", c.intermediate_size),
    }
    println!(
        "parameters:   {} total, {} active per token",
        human(total),
        human(active)
    );
    let list: Vec<String> = ck
        .dtype_totals()
        .iter()
        .map(|(d, (n, el))| format!("{d} ×{n} ({})", human(*el)))
        .collect();
    println!("tensors:      {}", list.join(", "));
    if c.num_nextn_predict_layers > 0 {
        // The first MTP layer's weights, in any of the names a checkpoint stores them by.
        let n = c.num_hidden_layers;
        let names = [
            format!("model.layers.{n}.eh_proj.weight"),
            format!("model.layers.{n}.e_proj.weight"),
            "mtp.0.e_proj.weight".to_string(),
            format!("blk.{n}.nextn.eh_proj.weight"),
        ];
        let present = ck.tensors().iter().any(|t| names.contains(&t.name));
        println!(
            "mtp:          {} layer(s) declared; {}",
            c.num_nextn_predict_layers,
            match present {
                true => "weights present: drafts with them by default (--draft mtp)",
                false => "no weights in the checkpoint: no MTP drafting",
            }
        );
    }
    println!("file size:    {}", bytes(ck.file_bytes()));
    // Weights are used in place from the mapped file; MLA also keeps kv_b_proj as f32 per layer.
    match c.kv_b_f32_bytes()? {
        0 => println!(
            "memory:       {} mapped weights (+ KV cache)",
            bytes(ck.file_bytes())
        ),
        kv_b => println!(
            "memory:       {} mapped weights + {} f32 kv_b_proj (+ KV cache)",
            bytes(ck.file_bytes()),
            bytes(kv_b as u64)
        ),
    }
    if let Some(v) = c.v4() {
        // Per layer kind: the entry pieces kept in the blocks, the window state per sequence.
        let kinds = [
            moela_model::V4LayerKind::Sliding,
            moela_model::V4LayerKind::Csa,
            moela_model::V4LayerKind::Hca,
        ];
        let (mut rows, mut ring_rows) = (Vec::new(), Vec::new());
        for k in kinds {
            let n = v.layers.iter().filter(|l| l.kind == k).count();
            if n > 0 {
                if v.cache_row(k)? > 0 {
                    rows.push(format!("{n} × {} ({})", v.cache_row(k)?, k.as_str()));
                }
                ring_rows.push(format!("{n} × {} ({})", v.window_row(k)?, k.as_str()));
            }
        }
        let f32_kv = moela_model::KvType::F32;
        let per_token = c.kv_bytes_per_token(f32_kv)?;
        println!(
            "KV cache:     {} values/token in blocks (compressed entries: {}): {per_token} B/token as f32",
            c.kv_values_per_token()?,
            if rows.is_empty() { "none".into() } else { rows.join(" + ") },
        );
        let ring = v.ring_spec()?;
        let bt = moela_model::DEFAULT_BLOCK_TOKENS;
        let ring_bytes = ring.bytes(f32_kv, bt);
        println!(
            "window state: {} values/token ({}) for a sequence's last {} tokens: at most {} per sequence as f32",
            ring.widths.iter().sum::<usize>(),
            ring_rows.join(" + "),
            ring.keep(bt),
            bytes(ring_bytes as u64)
        );
        let full = c.max_position_embeddings;
        println!(
            "at {full} tokens: {} in blocks + {} window state, as f32 (half as f16)",
            bytes((per_token as u64).saturating_mul(full as u64)),
            bytes(ring_bytes as u64)
        );
    } else {
        // MLA's cached row, by part.
        let row = match c.mla() {
            Some(m) => format!(
                " = latent {} + rope key {}{}",
                m.kv_lora_rank,
                m.qk_rope_head_dim,
                m.indexer.as_ref().map_or(String::new(), |ix| format!(
                    " + index key {}",
                    ix.index_head_dim
                ))
            ),
            None => String::new(),
        };
        println!(
            "KV cache:     {} values/token ({} layers × {}{row}): {} B/token as f32",
            c.kv_values_per_token()?,
            c.num_hidden_layers,
            c.latent_dim()?,
            c.kv_bytes_per_token(moela_model::KvType::F32)?
        );
    }
    if a.check {
        check_weights(&ck)?;
    }
    Ok(())
}

/// `inspect --check`: every stored value decoded and tested for NaN / ±∞.
fn check_weights(files: &ModelFiles) -> Result<()> {
    let r = files.scan_non_finite()?;
    if r.bad.is_empty() {
        println!(
            "check:        {} tensors, {} values: no NaN or infinity{}",
            r.tensors,
            r.values,
            match r.skipped.len() {
                0 => String::new(),
                n => format!(" ({n} non-float tensors not read)"),
            }
        );
        return Ok(());
    }
    for b in &r.bad {
        println!(
            "check:        {}: {} non-finite values, the first {} at index {}",
            b.tensor, b.count, b.value, b.index
        );
    }
    bail!(
        "{} of {} tensors hold NaN or infinite values",
        r.bad.len(),
        r.tensors
    )
}

/// DeepSeek-V4's layer kinds, compressed branches and hyper-connections (`inspect`).
fn inspect_v4(c: &moela_model::Config, v: &moela_model::V4Config) {
    use moela_model::V4LayerKind;
    let count = |k: V4LayerKind| v.layers.iter().filter(|l| l.kind == k).count();
    let hashed: Vec<String> = (0..v.layers.len())
        .filter(|&l| v.layers[l].hash_moe)
        .map(|l| l.to_string())
        .collect();
    println!(
        "layers:       {} sliding, {} CSA (ratio {}), {} HCA (ratio {}); hash-routed layers: {}",
        count(V4LayerKind::Sliding),
        count(V4LayerKind::Csa),
        v.csa_ratio,
        count(V4LayerKind::Hca),
        v.hca_ratio,
        if hashed.is_empty() {
            "none".to_string()
        } else {
            hashed.join(",")
        }
    );
    println!(
        "indexer:      CSA, {} heads of {}, top {} entries per query",
        v.indexer.index_n_heads, v.indexer.index_head_dim, v.indexer.index_topk
    );
    match &v.compress_yarn {
        Some(y) => println!(
            "compressed:   rope theta {}, YaRN factor {} (orig {}), beta {}/{}, attention factor {}",
            v.compress_rope_theta,
            y.factor,
            y.original_max_position_embeddings,
            y.beta_fast,
            y.beta_slow,
            y.attention_factor.map_or("derived".to_string(), |f| f.to_string())
        ),
        None => println!("compressed:   rope theta {}, no scaling", v.compress_rope_theta),
    }
    println!(
        "mHC:          {} streams, {} Sinkhorn iterations, eps {}; SwiGLU limit {}",
        v.hc.hc_mult,
        v.hc.sinkhorn_iters,
        v.hc.eps,
        c.moe
            .as_ref()
            .and_then(|m| m.swiglu_limit)
            .map_or("none".to_string(), |l| l.to_string())
    );
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// How the weights were placed, for `bench --json`: "fastest" (repacked copies where they
/// pay), "in_place" (the file mapping) or "resident" (experts in the mapping, the hottest
/// copied).
fn placement_name(p: Placement) -> &'static str {
    match p {
        Placement::Fastest => "fastest",
        Placement::InPlace => "in_place",
        Placement::Resident { .. } => "resident",
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let m = load(&a.model)?;
    let load_s = started.elapsed().as_secs_f64();
    let cfg = moela_engine::BenchConfig {
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        context: a.context,
        seed: 42,
        repetitions: a.repetitions as usize,
        warmup: !a.no_warmup,
        batch: a.batch as usize,
        draft: match a.verify_tokens {
            0 => a.draft.config(&m.model),
            _ => DraftConfig::default(),
        },
        verify_tokens: a.verify_tokens,
    };
    let need = cfg.context_needed();
    if need > m.ctx {
        bail!(
            "the benchmark needs {need} tokens of context, the model allows {}",
            m.ctx
        );
    }
    let r = moela_engine::run_bench(&m.model, &cfg).map_err(engine_error)?;
    let c = &m.model.config;
    let kv_bytes_per_token = c.kv_bytes_per_token(m.model.kv_type())?;
    // DeepSeek-V4's window state, kept per sequence outside the blocks (0 for other models).
    let window_state = c.ring_spec()?.map_or(0, |r| {
        r.bytes(m.model.kv_type(), moela_model::DEFAULT_BLOCK_TOKENS)
    });
    let rss = moela_engine::peak_rss_bytes();
    let threads = moela_kernels::num_threads();
    // Weights copied into anonymous memory in a repacked layout (0 with --mmap-only).
    let repacked: usize = m
        .model
        .weights
        .named_tensors()
        .iter()
        .filter_map(|(_, t)| match t {
            moela_model::weights::TensorRef::Matrix(q) if q.is_packed() => Some(q.nbytes()),
            _ => None,
        })
        .sum();
    let residency = m.model.residency();
    let per_token = |b: u64| b as f64 / r.decode_tokens.max(1) as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "prefill_tok_s": r.prefill_tok_s,
                "decode_tok_s": r.decode_tok_s,
                "ttft_ms": r.ttft_ms,
                "prompt_tokens": a.prompt_tokens,
                "gen_tokens": a.gen_tokens,
                "decode_context": r.decode_context,
                "prefill_tok_s_sd": r.prefill_tok_s_sd,
                "decode_tok_s_sd": r.decode_tok_s_sd,
                "prefill_tok_s_samples": r.prefill_samples,
                "decode_tok_s_samples": r.decode_samples,
                "repetitions": a.repetitions,
                "warmup": !a.no_warmup,
                "batch": a.batch,
                "load_s": load_s,
                "peak_rss_bytes": rss,
                "kv_bytes_per_token": kv_bytes_per_token,
                "kv_window_state_bytes_per_sequence": window_state,
                "repacked_weight_bytes": repacked,
                "placement": placement_name(m.placement),
                "expert_budget_bytes": residency.map(|s| s.budget_bytes),
                "expert_resident_bytes": residency.map(|s| s.resident_bytes),
                "expert_hit_rate": r.decode_residency.and_then(|s| s.hit_rate()),
                "expert_mapped_bytes_per_token": r.decode_residency.map(|s| per_token(s.mapped_bytes)),
                "page_in_bytes_per_token": r.decode_read_bytes.map(per_token),
                "threads": threads,
                "isa": format!("{:?}", moela_kernels::Isa::best()),
                "file_row_walk": moela_kernels::FileRowWalk::active().name(),
                "row_vector_bits": moela_kernels::RowVectors::active().bits(),
                "draft": cfg.draft.mode.as_str(),
                "draft_tokens": a.draft.draft_tokens,
                "acceptance_rate": r.acceptance_rate(),
                "tokens_per_step": r.tokens_per_step(),
                "verify_tokens": a.verify_tokens,
            })
        );
    } else {
        println!("threads:      {threads}");
        println!("load:         {load_s:.2} s");
        let runs = match a.repetitions {
            1 => String::new(),
            n => format!(", mean of {n} runs"),
        };
        println!(
            "prefill:      {:.2} ± {:.2} tok/s ({} tokens, time to first token {:.1} ms{runs})",
            r.prefill_tok_s, r.prefill_tok_s_sd, a.prompt_tokens, r.ttft_ms
        );
        let batch = match a.batch {
            1 => String::new(),
            n => format!(" × {n} sequences"),
        };
        println!(
            "decode:       {:.2} ± {:.2} tok/s ({} tokens{batch} at context {}{runs})",
            r.decode_tok_s, r.decode_tok_s_sd, a.gen_tokens, r.decode_context
        );
        if cfg.draft.mode != DraftMode::None {
            println!(
                "drafts:       {} (≤ {} per step): {:.1} % accepted, {:.2} tokens per step",
                cfg.draft.mode.as_str(),
                a.draft.draft_tokens,
                100.0 * r.acceptance_rate(),
                r.tokens_per_step()
            );
        }
        println!("peak RSS:     {}", rss.map_or("unknown".into(), bytes));
        if let (Some(s), Some(d)) = (residency, r.decode_residency) {
            println!(
                "experts:      {} resident of {} allowed; decode: {:.1} % of expert products from RAM, {} per token read from the mapping",
                bytes(s.resident_bytes),
                bytes(s.budget_bytes),
                100.0 * d.hit_rate().unwrap_or(0.0),
                bytes(per_token(d.mapped_bytes) as u64)
            );
        }
        if let Some(b) = r.decode_read_bytes {
            println!(
                "page-ins:     {} per decoded token from storage",
                bytes(per_token(b) as u64)
            );
        }
        println!("KV cache:     {kv_bytes_per_token} B/token");
        if window_state > 0 {
            println!(
                "window state: {} per sequence at most",
                bytes(window_state as u64)
            );
        }
    }
    Ok(())
}

fn cmd_quantize(a: QuantizeArgs) -> Result<()> {
    let source = model_path(&Some(a.model.clone()))?;
    let model_dir = source.path;
    let files = ModelFiles::open(&model_dir)?;
    if files.config().gqa().is_some() {
        bail!(
            "moela quantize writes DeepSeek (deepseek2 / deepseek32 / deepseek4) GGUF files only; {} is a {} model (use --quant to quantize it while loading)",
            model_dir.display(),
            files.config().model_type.as_str()
        );
    }
    let (tok, tok_cfg) = match &files {
        ModelFiles::Hf(_) => {
            let read = |f: &str| {
                let p = model_dir.join(f);
                std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))
            };
            (read("tokenizer.json")?, read("tokenizer_config.json").ok())
        }
        ModelFiles::Gguf(g) => {
            let (t, c) = g.tokenizer_json()?;
            (t, Some(c))
        }
    };
    // The exporter writes the file layout: no packed copies.
    let opts = LoadOptions {
        progress: std::io::stderr().is_terminal(),
        placement: Placement::InPlace,
        memory_budget: None,
        ..LoadOptions::default()
    };
    let model = files.load_model(&opts)?;
    let name = match source.hub {
        Some(repo) => repo.id.rsplit('/').next().unwrap_or("moela").to_string(),
        None => (model_dir.file_stem())
            .map_or_else(|| "moela".to_string(), |n| n.to_string_lossy().into_owned()),
    };
    moela_loader::export_gguf(&model, &tok, tok_cfg.as_deref(), a.dtype, &name, &a.out)?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({}, {})",
        a.out.display(),
        a.dtype.name(),
        bytes(size)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("6442450944"), Ok(6 << 30));
        assert_eq!(parse_bytes("6G"), Ok(6 << 30));
        assert_eq!(parse_bytes("6 GiB"), Ok(6 << 30));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("1.2.3M").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }
}
