//! Harnesses of the fuzz targets, as plain functions so that the seed corpora also run as ordinary
//! tests (`cargo test --manifest-path fuzz/Cargo.toml`).
//!
//! Each harness feeds bytes that another process could have written (a request chunk, a ring
//! descriptor, the headers of rings and pools) through the code the server runs on them. The only
//! acceptable outcomes are a value or an error: a panic, an out-of-bounds access (the targets run
//! under AddressSanitizer) or a loop that does not end (libFuzzer's `-timeout`) is a finding.

#![warn(missing_docs)]

pub mod descriptor;
pub mod headers;
pub mod request;
pub mod seeds;

/// Reads fuzz input as a stream of integers; past the end every read gives 0.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    /// The next little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// The next little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// A 64-byte aligned buffer, as a pool chunk is.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Line(pub [u8; 64]);

/// A zeroed, 64-byte aligned byte buffer of at least `len` bytes.
pub fn aligned(len: usize) -> Vec<Line> {
    vec![Line([0; 64]); len.div_ceil(64).max(1)]
}

/// The bytes of an aligned buffer.
pub fn bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: `Line` is a plain 64-byte array (repr(C), no padding), so the lines are one
    // contiguous run of initialised bytes, borrowed mutably for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64) }
}
