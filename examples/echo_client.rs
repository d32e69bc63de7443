//! Sends one request to a running service and prints the answer; with `--stream`, prints the
//! stream chunk by chunk.
//!
//! ```text
//! shm-runtime serve --name demo --model echo=echo &
//! cargo run -p shm-examples --bin echo-client -- demo "hello world" [--stream] [--model echo] [--max-tokens N]
//! ```

use anyhow::{bail, Context, Result};
use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
use shm_runtime::Client;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let service = args
        .next()
        .context("usage: echo-client SERVICE TEXT [--stream] [--model M]")?;
    let text = args
        .next()
        .context("usage: echo-client SERVICE TEXT [--stream] [--model M]")?;
    let (mut stream, mut model, mut max_tokens) = (false, "echo".to_owned(), 256);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--stream" => stream = true,
            "--model" => model = args.next().context("--model NAME")?,
            "--max-tokens" => max_tokens = args.next().context("--max-tokens N")?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let client = Client::connect(&service)?;
    let req = Request {
        id: 1,
        model,
        task: Task::Generate,
        input: Input::Text(text),
        params: Params {
            max_tokens,
            ..Params::default()
        },
    };
    if stream {
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
