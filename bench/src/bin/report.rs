//! The performance report (see [`shm_bench::report`]):
//!
//! ```text
//! cargo run --release -p shm-bench [--features onnx,gguf] --bin report -- [--quick] [--out DIR]
//! ```

fn main() -> anyhow::Result<()> {
    shm_bench::report::main()
}
