//! A small seeded generator (SplitMix64): the fault schedule and the workload's choices
//! come from it, so a run is reproduced by its seed. Not for anything secret.

#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when the range is empty). The modulo bias is
    /// negligible for the small ranges used here.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// A derived generator, so that one consumer's draws do not shift another's.
    pub fn fork(&mut self, salt: u64) -> Prng {
        Prng(self.next_u64() ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<u64> = {
            let mut p = Prng::new(42);
            (0..16).map(|_| p.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut p = Prng::new(42);
            (0..16).map(|_| p.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut c = Prng::new(43);
        assert_ne!(a[0], c.next_u64());
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut p = Prng::new(7);
        for _ in 0..1000 {
            let v = p.range(3, 5);
            assert!((3..=5).contains(&v));
            assert!(p.index(4) < 4);
        }
        assert_eq!(p.range(9, 2), 9);
        assert_eq!(p.index(0), 0);
    }
}
