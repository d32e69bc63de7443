//! `shm-runtime status`: a running service's state and counters, as text for a person or JSON
//! for a program.

use std::io::Write;

use anyhow::Result;
use shm_runtime::ServiceStatus;

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// Service name.
    name: String,
    /// Print the status as one JSON document (`shm_runtime::ServiceStatus`).
    #[arg(long)]
    json: bool,
}

pub(crate) fn status(args: &StatusArgs) -> Result<()> {
    let st = shm_runtime::status(&args.name)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let text = serde_json::to_string_pretty(&st)?;
        writeln!(out, "{text}")?;
    } else {
        write_text(&mut out, &args.name, &st)?;
    }
    out.flush()?;
    Ok(())
}

fn write_text(out: &mut impl Write, name: &str, st: &ServiceStatus) -> std::io::Result<()> {
    writeln!(
        out,
        "service {name:?}: {}, server pid {} ({})",
        st.state,
        st.server_pid,
        if st.server_alive { "alive" } else { "dead" }
    )?;
    let errors: Vec<String> = st
        .errors
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    writeln!(
        out,
        "requests {}  ok {}  errors: {}",
        st.requests,
        st.ok,
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    )?;
    for l in &st.lanes {
        writeln!(
            out,
            "lane {}: model {}, lane {}, queued {} running {} accepted {} completed {} (batched: {} requests in {} batches), backend panics {} restarts {}",
            l.model.as_deref().unwrap_or("?"),
            l.model_state,
            l.state,
            l.queued,
            l.running,
            l.accepted,
            l.completed,
            l.batched,
            l.batches,
            l.panics,
            l.restarts
        )?;
        let m = &l.metrics;
        if let (Some(p50), Some(p99)) = (m.end_to_end.quantile(0.5), m.end_to_end.quantile(0.99)) {
            write!(
                out,
                "  in the server (bucket bounds): p50 <= {}, p99 <= {}",
                seconds(p50),
                seconds(p99)
            )?;
            if let Some(ttft) = m.time_to_first_token.quantile(0.5) {
                write!(
                    out,
                    "; first token p50 <= {}; {} tokens generated",
                    seconds(ttft),
                    m.generated_tokens
                )?;
            }
            writeln!(out)?;
        }
    }
    writeln!(out, "clients: {}", st.clients.len())?;
    for c in &st.clients {
        let held: Vec<String> = st
            .pool
            .iter()
            .zip(&c.held)
            .filter(|(_, &n)| n > 0)
            .map(|(k, n)| format!("{n}x{} B", k.chunk_size))
            .collect();
        writeln!(
            out,
            "  slot {} pid {} inflight {} requests {} errors {} holds {}",
            c.slot,
            c.pid,
            c.inflight,
            c.requests,
            c.errors,
            if held.is_empty() {
                "nothing".to_owned()
            } else {
                held.join(", ")
            }
        )?;
        if let Some(why) = &c.disconnected {
            writeln!(out, "    disconnected by the server: {why}")?;
        }
    }
    for c in &st.pool {
        writeln!(
            out,
            "pool {:>8} B: {}/{} free, high water {}, {} per client",
            c.chunk_size, c.free, c.count, c.high_water, c.share
        )?;
    }
    Ok(())
}

/// A duration in seconds, in the unit that reads best.
fn seconds(s: f64) -> String {
    match s {
        s if s < 1e-3 => format!("{:.0} us", s * 1e6),
        s if s < 1.0 => format!("{:.1} ms", s * 1e3),
        s => format!("{s:.1} s"),
    }
}
