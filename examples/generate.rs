//! Streams a generated answer from a running service to the terminal, token by token, then prints
//! the finish reason, token counts, time to first token and tokens per second; with `--json`,
//! prints the finished generation as one JSON object instead.
//!
//! ```text
//! generate SERVICE MODEL "prompt" [--chat] [--max-tokens N] [--temperature T] [--seed S] [--json]
//! ```
//!
//! With `--chat`, the prompt is sent as one user message and formatted with the model's own chat
//! template; otherwise it is plain text to continue.

#[path = "support.rs"]
mod support;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use shm_runtime::{Client, GenerateOptions, Generation, Message, StreamEvent};

/// Streams a generated answer from a running service, then its figures.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Service name.
    service: String,
    /// Model to generate with (a `generate` model).
    model: String,
    /// The prompt: text to continue, or with --chat the user's message.
    prompt: String,
    /// Send the prompt as a user message, formatted by the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: u32,
    /// Sampling temperature (0: always the most likely token).
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    temperature: f32,
    /// Seed of the sampler (the same seed gives the same text).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Print the finished generation as one JSON object (text, tokens, finish reason, usage,
    /// timings) instead of streaming it.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    support::main_with(run)
}

fn run(args: Args) -> Result<()> {
    let client = Client::connect(&args.service)?;
    let options = GenerateOptions::new()
        .max_tokens(args.max_tokens)
        .temperature(args.temperature)
        .seed(args.seed);
    let messages = [Message::user(args.prompt.as_str())];
    if args.json {
        let g = if args.chat {
            client.chat(&args.model, &messages, &options)?
        } else {
            client.generate(&args.model, &args.prompt, &options)?
        };
        println!("{}", json(&g));
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let t = Instant::now();
    let stream = if args.chat {
        client.chat_stream(&args.model, &messages, &options)?
    } else {
        write!(out, "{}", args.prompt)?;
        client.stream(&args.model, &args.prompt, &options)?
    };
    let mut first = None;
    for event in stream {
        match event? {
            StreamEvent::Delta { text, .. } => {
                first.get_or_insert_with(|| t.elapsed());
                write!(out, "{text}")?;
                out.flush()?;
            }
            StreamEvent::Done(g) => {
                let n = g.usage.completion_tokens;
                let decode_s = g
                    .total_time
                    .saturating_sub(g.time_to_first_token)
                    .as_secs_f64();
                writeln!(out)?;
                writeln!(
                    out,
                    "[{:?}: {} prompt + {n} generated tokens; first token after {:.0} ms (server {:.0} ms); \
                     {:.1} tokens/s decoding; {:.2} s in all]",
                    g.finish_reason,
                    g.usage.prompt_tokens,
                    first.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    g.time_to_first_token.as_secs_f64() * 1e3,
                    if decode_s > 0.0 { n.saturating_sub(1) as f64 / decode_s } else { 0.0 },
                    t.elapsed().as_secs_f64()
                )?;
            }
        }
    }
    Ok(())
}

fn json(g: &Generation) -> serde_json::Value {
    serde_json::json!({
        "text": g.text,
        "tokens": g.tokens,
        "finish_reason": format!("{:?}", g.finish_reason).to_lowercase(),
        "prompt_tokens": g.usage.prompt_tokens,
        "completion_tokens": g.usage.completion_tokens,
        "time_to_first_token_ms": g.time_to_first_token.as_secs_f64() * 1e3,
        "total_ms": g.total_time.as_secs_f64() * 1e3,
    })
}
