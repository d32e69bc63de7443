//! Fuzz target `headers`: see [`shm_runtime_fuzz::headers`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_runtime_fuzz::headers::run(data));
