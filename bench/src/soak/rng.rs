//! Reproducible pseudo-random choices for the soak's children and its chaos thread.

/// xorshift64*: reproducible pseudo-random choices without a dependency.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// True with probability `pct` percent.
    pub(super) fn pct(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    pub(super) fn text(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(self.range(0x20, 0x7F) as u8))
            .collect()
    }
}
