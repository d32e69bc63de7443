//! Writes the seed corpora: `seeds <corpus dir>` fills `<dir>/request`, `<dir>/descriptor` and
//! `<dir>/headers` (existing files are overwritten, others left alone).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let sets = [
        ("request", shm_runtime_fuzz::seeds::request_seeds()),
        ("descriptor", shm_runtime_fuzz::seeds::descriptor_seeds()),
        ("headers", shm_runtime_fuzz::seeds::headers_seeds()),
    ];
    for (target, seeds) in sets {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        for (name, bytes) in &seeds {
            std::fs::write(d.join(name), bytes)?;
        }
        println!("{}: {} seeds", d.display(), seeds.len());
    }
    Ok(())
}
