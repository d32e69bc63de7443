//! A backend of your own, served beside the built-in ones: `reverse` answers a prompt with its
//! characters in reverse order (streamed word by word when asked).
//!
//! ```text
//! cargo run -p shm-examples --bin custom-backend -- svc          # serves `reverse` until Enter
//! ```
//!
//! Any client then asks it like any model:
//! `client.generate("reverse", "hello", &GenerateOptions::default())` answers "olleh".

use std::io::{BufRead, Write as _};

use clap::Parser;
use shm_runtime::backend::writer::Out;
use shm_runtime::backend::{Backend, BackendError, RunContext};
use shm_runtime::protocol::{
    ArchivedInput, ArchivedRequest, Body, FinishReason, Generation, StreamChunk, Task, Usage,
};
use shm_runtime::{ModelConfig, ServerBuilder};

/// Serves a custom backend, `reverse`, as the model `reverse`, until stdin ends or has a line.
#[derive(Parser)]
struct Args {
    /// The service name.
    service: String,
}

/// Reverses its prompt.
struct Reverse {
    /// Streamed parts carry this many words at most (option `words_per_part`, default 1).
    words_per_part: usize,
}

impl Reverse {
    fn new(m: &ModelConfig) -> Result<Reverse, String> {
        let words_per_part = match m.options.get("words_per_part") {
            None => 1,
            Some(v) => v
                .as_number()
                .filter(|n| *n >= 1.0)
                .ok_or("option words_per_part must be a number of at least 1")?
                as usize,
        };
        Ok(Reverse { words_per_part })
    }
}

impl Backend for Reverse {
    fn tasks(&self) -> &[Task] {
        &[Task::Generate]
    }

    fn run(
        &self,
        req: &ArchivedRequest,
        ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        let ArchivedInput::Text(prompt) = &req.input else {
            return Err(BackendError::Invalid("reverse takes a text prompt".into()));
        };
        let text: String = prompt.chars().rev().collect();
        if req.params.stream {
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            for (index, part) in words.chunks(self.words_per_part).enumerate() {
                ctx.emit(StreamChunk {
                    index: index as u32,
                    text: part.concat(),
                    tokens: Vec::new(),
                    logprobs: Vec::new(),
                })
                .map_err(BackendError::Stopped)?;
            }
        }
        let chars = text.chars().count() as u32;
        Ok(out.body(Body::Generation(Generation {
            text,
            tokens: Vec::new(),
            finish: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: chars,
                generated_tokens: chars,
                ..Usage::default()
            },
            logprobs: Vec::new(),
        }))?)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = ServerBuilder::new(&args.service)
        .backend("reverse", Reverse::new)
        .model(ModelConfig::new("reverse", "reverse"))
        .start()?;
    // A server outlives whoever reads its stdout: a closed one is no reason to stop (nor to
    // panic, as println! would).
    let _ = writeln!(
        std::io::stdout(),
        "serving {} (model reverse); Enter stops it",
        args.service
    );
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    server.shutdown(std::time::Duration::from_secs(1));
    Ok(())
}
