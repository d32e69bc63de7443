//! The chaos soak (see [`shm_bench::soak`]):
//!
//! ```text
//! cargo run --release -p shm-bench --bin soak -- --seconds 120 [--kill-every-ms 200] [--clients 6]
//! ```

fn main() -> std::process::ExitCode {
    shm_bench::soak::main()
}
