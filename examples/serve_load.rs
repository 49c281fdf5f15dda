//! Load generator for a running `moela serve`: N concurrent streaming chat completions over raw
//! HTTP/1.1 (one OS thread and one connection each, no async runtime, no HTTP library), at
//! several concurrency levels. A Python client tops out near 170 streamed events/s on one core;
//! this one parses a chunked SSE stream with a few string searches, so it is not the bottleneck.
//!
//! ```sh
//! moela serve --port 8080 &                      # built-in model, or --model FILE
//! cargo run --release --example serve_load -- --port 8080 --streams 1 4 16 64 --max-tokens 128
//! ```
//!
//! Prints one markdown row per level: streams, aggregate generated tok/s (every stream's
//! `usage.completion_tokens` over the wall time from the first request sent to the last stream
//! ended), mean per-stream decode tok/s (tokens after the first over the time after the first),
//! TTFT p50/p90/max. `--json` prints one JSON object per level instead. Every request sends
//! `ignore_eos: true`, so each stream generates exactly `--max-tokens` tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Args {
    host: String,
    port: u16,
    streams: Vec<usize>,
    max_tokens: usize,
    prompt: String,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 8080,
        streams: vec![1, 4, 16, 64],
        max_tokens: 128,
        prompt: "Write a Python function that reverses a string.".into(),
        json: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let value = |i: usize| {
        argv.get(i + 1)
            .cloned()
            .ok_or(format!("{} needs a value", argv[i]))
    };
    while i < argv.len() {
        match argv[i].as_str() {
            "--host" => a.host = value(i)?,
            "--port" => a.port = value(i)?.parse().map_err(|e| format!("--port: {e}"))?,
            "--max-tokens" => {
                a.max_tokens = value(i)?
                    .parse()
                    .map_err(|e| format!("--max-tokens: {e}"))?
            }
            "--prompt" => a.prompt = value(i)?,
            "--json" => {
                a.json = true;
                i += 1;
                continue;
            }
            "--streams" => {
                a.streams.clear();
                while let Some(n) = argv.get(i + 1).and_then(|s| s.parse().ok()) {
                    a.streams.push(n);
                    i += 1;
                }
                if a.streams.is_empty() || a.streams.contains(&0) {
                    return Err("--streams needs one or more counts of at least 1".into());
                }
                i += 1;
                continue;
            }
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    Ok(a)
}

/// One stream's outcome.
struct Outcome {
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

/// Reads an HTTP/1.1 chunked body, handing each decoded piece to `f` as it arrives.
fn read_chunked(r: &mut impl BufRead, mut f: impl FnMut(&str)) -> Result<(), String> {
    let mut line = String::new();
    let mut buf = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            return Ok(());
        }
        buf.resize(size + 2, 0);
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        f(std::str::from_utf8(&buf[..size]).map_err(|e| e.to_string())?);
    }
}

fn one_stream(a: &Args, start: &Barrier) -> Result<Outcome, String> {
    let body = serde_json::json!({
        "model": "moela",
        "messages": [{"role": "user", "content": a.prompt}],
        "max_tokens": a.max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        a.host,
        a.port,
        body.len()
    );
    let mut s = TcpStream::connect((a.host.as_str(), a.port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    start.wait();
    let t0 = Instant::now();
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| e.to_string())?;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        if h.trim().is_empty() {
            break;
        }
        let h = h.to_ascii_lowercase();
        chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
    }
    if !status.contains(" 200 ") {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        return Err(format!("{} {rest}", status.trim()));
    }
    let mut pending = String::new();
    let mut ttft = None;
    let mut tokens = None;
    let mut on_piece = |piece: &str| {
        pending.push_str(piece);
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                continue; // [DONE]
            };
            if ttft.is_none() {
                let d = &v["choices"][0]["delta"];
                let text = |k: &str| d[k].as_str().is_some_and(|s| !s.is_empty());
                if text("content") || text("reasoning_content") {
                    ttft = Some(t0.elapsed());
                }
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    };
    if chunked {
        read_chunked(&mut r, &mut on_piece)?;
    } else {
        let mut rest = String::new();
        r.read_to_string(&mut rest).map_err(|e| e.to_string())?;
        on_piece(&rest);
    }
    let total = t0.elapsed();
    Ok(Outcome {
        ttft: ttft.unwrap_or(total),
        total,
        tokens: tokens.ok_or("the stream carried no usage")?,
    })
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((p / 100.0) * (xs.len() - 1) as f64).round() as usize]
}

fn main() {
    let a = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if !a.json {
        println!("| streams | aggregate tok/s | per-stream decode tok/s | TTFT p50 ms | TTFT p90 ms | TTFT max ms |");
        println!("|---|---|---|---|---|---|");
    }
    for &n in &a.streams {
        let start = Arc::new(Barrier::new(n + 1));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (a, start) = (a.clone(), start.clone());
                std::thread::spawn(move || one_stream(&a, &start))
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let mut outs = Vec::new();
        for h in handles {
            match h.join() {
                Ok(Ok(o)) => outs.push(o),
                Ok(Err(e)) => {
                    eprintln!("error: a stream failed: {e}");
                    std::process::exit(1);
                }
                Err(_) => {
                    eprintln!("error: a client thread panicked");
                    std::process::exit(1);
                }
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let tokens: usize = outs.iter().map(|o| o.tokens).sum();
        let mut ttft: Vec<f64> = outs.iter().map(|o| o.ttft.as_secs_f64() * 1e3).collect();
        let per: f64 = outs
            .iter()
            .map(|o| {
                (o.tokens.saturating_sub(1)) as f64 / (o.total - o.ttft).as_secs_f64().max(1e-9)
            })
            .sum::<f64>()
            / n as f64;
        let agg = tokens as f64 / wall;
        let (p50, p90, max) = (
            percentile(&mut ttft, 50.0),
            percentile(&mut ttft, 90.0),
            percentile(&mut ttft, 100.0),
        );
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "streams": n, "tokens": tokens, "wall_s": wall, "aggregate_tok_s": agg,
                    "per_stream_decode_tok_s": per, "ttft_ms_p50": p50, "ttft_ms_p90": p90,
                    "ttft_ms_max": max,
                })
            );
        } else {
            println!("| {n} | {agg:.1} | {per:.1} | {p50:.0} | {p90:.0} | {max:.0} |");
        }
    }
}
