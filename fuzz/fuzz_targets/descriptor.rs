//! Fuzz target `descriptor`: see [`shm_runtime_fuzz::descriptor`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_runtime_fuzz::descriptor::run(data));
