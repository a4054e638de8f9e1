//! Which vector instruction set the hand-written kernels use, detected once at run time.
//!
//! The build targets generic x86-64, so kernels for AVX-512 or AVX2 are compiled with
//! `#[target_feature]` and chosen here; every caller keeps a portable path for other CPUs.

/// A vector instruction set that detlab's hand-written kernels (convolutions, the Models
/// Genesis intensity map) are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F + VL: 16 lanes, 32 registers.
    Avx512,
    /// AVX2 + FMA: 8 lanes, 16 registers.
    Avx2,
}

impl Isa {
    /// The instruction sets this CPU runs, best first.
    pub fn available() -> Vec<Isa> {
        let mut found = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            // VL too: with AVX-512F alone the 128/256-bit steps of a horizontal sum can only
            // use the first 16 registers, and LLVM then spilled the accumulators.
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                found.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                found.push(Isa::Avx2);
            }
        }
        found
    }

    /// The best instruction set of this CPU (`None`: the portable code runs instead, e.g. the
    /// im2col + gemm convolutions).
    /// `DETLAB_ISA=avx2` or `=none` chooses a lesser one, to compare or to test.
    pub fn best() -> Option<Isa> {
        static BEST: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Isa::available();
            match std::env::var("DETLAB_ISA").ok().as_deref().map(str::trim) {
                Some("none") => None,
                Some("avx2") => available.into_iter().find(|&isa| isa == Isa::Avx2),
                _ => available.first().copied(),
            }
        })
    }
}
