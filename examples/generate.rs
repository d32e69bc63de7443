//! Streams a generated answer from a running service to the terminal, token by token, then prints
//! the finish reason, token counts, time to first token and tokens per second.
//!
//! ```text
//! generate SERVICE MODEL "prompt" [--chat] [--max-tokens N] [--temperature T] [--seed S]
//! ```
//!
//! With `--chat`, the prompt is sent as one user message and formatted with the model's own chat
//! template; otherwise it is plain text to continue.

use std::io::Write as _;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use shm_runtime::protocol::{ArchivedBody, ChatMessage, Input, Params, Request, Task};
use shm_runtime::Client;

const USAGE: &str =
    "usage: generate SERVICE MODEL PROMPT [--chat] [--max-tokens N] [--temperature T] [--seed S]";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let service = args.next().context(USAGE)?;
    let model = args.next().context(USAGE)?;
    let prompt = args.next().context(USAGE)?;
    let (mut chat, mut max_tokens, mut temperature, mut seed) = (false, 128u32, 0.0f32, 0u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--chat" => chat = true,
            "--max-tokens" => max_tokens = args.next().context("--max-tokens N")?.parse()?,
            "--temperature" => temperature = args.next().context("--temperature T")?.parse()?,
            "--seed" => seed = args.next().context("--seed S")?.parse()?,
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let input = if chat {
        Input::Chat(vec![ChatMessage {
            role: "user".into(),
            content: prompt,
        }])
    } else {
        print!("{prompt}");
        Input::Text(prompt)
    };
    let client = Client::connect(&service)?;
    let req = Request {
        id: 1,
        model,
        task: Task::Generate,
        input,
        params: Params {
            max_tokens,
            temperature,
            seed,
            ..Params::default()
        },
    };
    let t = Instant::now();
    let mut first = None;
    let mut out = std::io::stdout().lock();
    for item in client.stream_request(&req)? {
        let view = item?;
        match &view.response()?.body {
            ArchivedBody::Chunk(c) => {
                first.get_or_insert_with(|| t.elapsed());
                write!(out, "{}", c.text.as_str())?;
                out.flush()?;
            }
            ArchivedBody::Generation(g) => {
                let u = &g.usage;
                let total = t.elapsed().as_secs_f64();
                let n = u.generated_tokens.to_native();
                let decode_s = (u.total_us.to_native() as f64 - u.ttft_us.to_native() as f64) / 1e6;
                writeln!(out)?;
                writeln!(
                    out,
                    "[{:?}: {} prompt + {n} generated tokens; first token after {:.0} ms (server {:.0} ms); \
                     {:.1} tokens/s decoding; {:.2} s in all]",
                    g.finish,
                    u.prompt_tokens,
                    first.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    u.ttft_us.to_native() as f64 / 1e3,
                    if decode_s > 0.0 { (n.saturating_sub(1)) as f64 / decode_s } else { 0.0 },
                    total
                )?;
            }
            ArchivedBody::Error(e) => bail!("{:?}: {}", e.code, e.message.as_str()),
            other => bail!("unexpected answer {other:?}"),
        }
    }
    Ok(())
}
