//! Seeded draws: proptest strategies evaluated with a generator derived
//! from the run's seed and a stream name, so that a seed reproduces every
//! choice (fault times, targets, message sizes, partitions) and the streams
//! (nemesis, each producer) do not shift each other.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A deterministic source of values for one stream.
pub struct Draw {
    runner: TestRunner,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Draw {
    /// The stream `name` of run seed `seed`.
    pub fn new(seed: u64, name: &str) -> Draw {
        let mut h = seed;
        for b in name.bytes() {
            h = splitmix(h ^ u64::from(b));
        }
        let mut bytes = [0u8; 32];
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            h = splitmix(h.wrapping_add(i as u64));
            chunk.copy_from_slice(&h.to_le_bytes());
        }
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        Draw {
            runner: TestRunner::new_with_rng(Config::default(), rng),
        }
    }

    /// One value of the strategy.
    pub fn value<S: Strategy>(&mut self, s: S) -> S::Value {
        s.new_tree(&mut self.runner)
            .expect("strategies used here never reject")
            .current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_stream_other_values() {
        let take = |seed, name| {
            let mut d = Draw::new(seed, name);
            (0..20).map(|_| d.value(0u32..1000)).collect::<Vec<_>>()
        };
        assert_eq!(take(7, "p0"), take(7, "p0"));
        assert_ne!(take(7, "p0"), take(7, "p1"));
        assert_ne!(take(7, "p0"), take(8, "p0"));
    }
}
