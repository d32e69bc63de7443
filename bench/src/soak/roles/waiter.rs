//! The `waiter` role of the server-kill phase.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context, Result};
use shm_runtime::protocol::ArchivedBody;
use shm_runtime::Error;

use super::{connect_retry, generate};
use crate::soak::lines::{say, watch_stdin};

/// Blocks in a long request, a stream and a loop of echoes; each must end with `ServerGone` when
/// the server is killed. Then waits for `again`, reconnects and is served.
pub(crate) fn role_waiter(service: &str) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    watch_stdin(stop, Some(tx), false);
    let client = connect_retry(service, Duration::from_secs(10))?;
    let long = 20_000;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut threads = Vec::new();
    {
        let (client, ready) = (client.clone(), ready_tx.clone());
        threads.push(std::thread::spawn(move || -> String {
            let r = generate(1, "slow", "x", long);
            let t = match client.submit(&r) {
                Ok(t) => t,
                Err(e) => return format!("submit {e:?}"),
            };
            let _ = ready.send(());
            let first = match client.recv(t, Duration::from_secs(60)) {
                Err(Error::ServerGone) => "ServerGone".to_owned(),
                Ok(v) => format!("an answer: {:?}", v.response().map(|r| format!("{r:?}"))),
                Err(e) => format!("{e:?}"),
            };
            match client.submit(&r) {
                Err(Error::ServerGone) => first,
                other => format!(
                    "{first}, then a submit gave {:?} instead of ServerGone",
                    other.err()
                ),
            }
        }));
    }
    {
        let (client, ready) = (client.clone(), ready_tx.clone());
        threads.push(std::thread::spawn(move || -> String {
            let mut r = generate(2, "steps", "x", long);
            r.params.stream = true;
            let t = match client.submit(&r) {
                Ok(t) => t,
                Err(e) => return format!("submit {e:?}"),
            };
            let mut told = false;
            loop {
                match client.recv(t, Duration::from_secs(60)) {
                    Ok(v) if !v.is_final() => {
                        if !told {
                            let _ = ready.send(());
                            told = true;
                        }
                    }
                    Err(Error::ServerGone) => return "ServerGone".to_owned(),
                    other => return format!("{:?}", other.map(|v| v.is_final())),
                }
            }
        }));
    }
    {
        let (client, ready) = (client.clone(), ready_tx);
        threads.push(std::thread::spawn(move || -> String {
            let mut told = false;
            let mut i = 3u64;
            loop {
                let r = generate(i, "echo", "ping", 8);
                i += 1;
                match client.infer_timeout(&r, Duration::from_secs(60)) {
                    Ok(_) => {
                        if !told {
                            let _ = ready.send(());
                            told = true;
                        }
                    }
                    Err(Error::ServerGone) => return "ServerGone".to_owned(),
                    Err(e) => return format!("{e:?}"),
                }
            }
        }));
    }
    for _ in 0..3 {
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("waiting for the three calls to be under way")?;
    }
    say("WAITING");
    for (i, t) in threads.into_iter().enumerate() {
        let outcome = t.join().unwrap_or_else(|_| "panic".to_owned());
        say(&format!("GONE {i} {outcome}"));
    }
    drop(client);
    say("ALLGONE");
    loop {
        match rx.recv() {
            Ok(line) if line == "again" => break,
            Ok(_) => continue,
            Err(_) => return Ok(ExitCode::from(3)),
        }
    }
    let client = connect_retry(service, Duration::from_secs(10))?;
    let v = client.infer(&generate(9, "echo", "again", 8))?;
    let ok =
        matches!(&v.response()?.body, ArchivedBody::Generation(g) if g.text.as_str() == "again");
    drop(v);
    say(if ok {
        "RECONNECTED"
    } else {
        "RECONNECTED wrong"
    });
    Ok(ExitCode::SUCCESS)
}
