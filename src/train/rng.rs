//! Per-iteration random generators: every random draw of iteration `i` comes from
//! `(seed, i, stream)`, so a resumed run needs nothing but the iteration number to continue
//! exactly where it stopped, and one stream's consumption never shifts another's.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The independent random streams of one iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum RngStream {
    /// Choice of cases, instances and crop positions.
    Sampling = 1,
    /// Augmentation parameters.
    Augmentation = 2,
    /// The detector's own draws inside `loss` (hard-negative sampling).
    Loss = 3,
    /// The fixed validation patches (drawn once; `iteration` is the batch index).
    Validation = 4,
}

/// 2^64 / golden ratio: spreads consecutive iteration numbers over the seed space.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 finaliser: a bijective mix, so distinct `(seed, iteration)` pairs rarely collide.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of `stream` for iteration `iteration` of a run seeded with `seed`.
pub fn iteration_rng(seed: u64, iteration: u64, stream: RngStream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ iteration.wrapping_mul(GOLDEN)));
    rng.set_stream(stream as u64);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_and_iterations_differ_and_repeat() {
        let draw = |seed, it, stream| iteration_rng(seed, it, stream).random::<u64>();
        assert_eq!(
            draw(7, 3, RngStream::Sampling),
            draw(7, 3, RngStream::Sampling)
        );
        assert_ne!(
            draw(7, 3, RngStream::Sampling),
            draw(7, 4, RngStream::Sampling)
        );
        assert_ne!(draw(7, 3, RngStream::Sampling), draw(7, 3, RngStream::Loss));
        assert_ne!(
            draw(7, 3, RngStream::Sampling),
            draw(8, 3, RngStream::Sampling)
        );
        // Seed 0, iteration 0 must not be a degenerate generator either.
        assert_ne!(
            draw(0, 0, RngStream::Sampling),
            draw(0, 1, RngStream::Sampling)
        );
    }
}
