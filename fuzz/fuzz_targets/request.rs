//! Fuzz target `request`: see [`shm_runtime_fuzz::request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_runtime_fuzz::request::run(data));
