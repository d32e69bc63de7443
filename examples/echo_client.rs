//! Sends one request to a running service and prints the answer; with `--stream`, prints the
//! stream chunk by chunk. It uses the raw protocol (`Request`, `ArchivedBody`) on purpose: the
//! typed calls are in `generate` and `infer`.
//!
//! ```text
//! shm-runtime serve --name demo --model echo=echo &
//! cargo run -p shm-examples --bin echo-client -- demo "hello world" [--stream] [--model echo] [--max-tokens N]
//! ```

#[path = "support.rs"]
mod support;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
use shm_runtime::Client;

/// Sends one request to a running service and prints the answer (raw protocol).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Service name.
    service: String,
    /// Text to send.
    text: String,
    /// Print the answer as it is streamed, chunk by chunk.
    #[arg(long)]
    stream: bool,
    /// Model to send it to.
    #[arg(long, default_value = "echo")]
    model: String,
    /// Most tokens to generate.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_tokens: u32,
}

fn main() -> ExitCode {
    support::main_with(run)
}

fn run(args: Args) -> Result<()> {
    let client = Client::connect(&args.service)?;
    let req = Request {
        id: 1,
        model: args.model,
        task: Task::Generate,
        input: Input::Text(args.text),
        params: Params {
            max_tokens: args.max_tokens,
            ..Params::default()
        },
    };
    if args.stream {
        for item in client.stream_request(&req)? {
            let view = item?;
            match &view.response()?.body {
                ArchivedBody::Chunk(c) => println!("chunk {}: {:?}", c.index, c.text.as_str()),
                ArchivedBody::Generation(g) => println!(
                    "final: {:?} ({} tokens, {:?})",
                    g.text.as_str(),
                    g.usage.generated_tokens,
                    g.finish
                ),
                other => println!("{other:?}"),
            }
        }
    } else {
        let view = client.infer(&req)?;
        match &view.response()?.body {
            ArchivedBody::Generation(g) => println!("answer: {:?}", g.text.as_str()),
            other => println!("{other:?}"),
        }
    }
    Ok(())
}
