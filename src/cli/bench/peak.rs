//! The core's f32 peak, measured: the clock from a chain of dependent register-register adds
//! (one cycle each on every x86-64 core; add-immediate chains are folded by the renamer of
//! recent Intel cores and run faster than the clock), and the FMA throughput from independent
//! FMA chains at the widest vector width the CPU has (AVX-512, else AVX2). Peak = FMA lanes ×
//! 2 × pipes × clock, where pipes = measured FMA instructions per cycle (rounded). Both loops
//! are timed in this thread's CPU time, so that other processes sharing the core do not count.

/// One core's measured peak.
#[derive(Clone, Copy, Debug)]
pub struct CorePeak {
    /// Clock in GHz while the measurement ran (dependent-add chain).
    pub clock_ghz: f64,
    /// f32 lanes of one FMA instruction (16 with AVX-512, 8 with AVX2, 0 without FMA).
    pub lanes: usize,
    /// FMA instructions retired per cycle (the FMA pipes), measured.
    pub pipes: usize,
    /// lanes × 2 FLOP × pipes × clock, in GFLOP/s.
    pub gflops: f64,
}

impl std::fmt::Display for CorePeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "one core's f32 peak {:.0} GFLOP/s = {} lanes × 2 (FMA) × {} pipes × {:.2} GHz \
             (clock from a dependent add chain in thread CPU time, pipes from measured FMA \
             throughput)",
            self.gflops, self.lanes, self.pipes, self.clock_ghz
        )
    }
}

/// Measure the current core's clock and FMA peak (about 0.3 s).
pub fn measure() -> CorePeak {
    let clock_ghz = (0..5).map(|_| clock_ghz()).fold(0.0, f64::max);
    let (lanes, per_second) = fma_throughput();
    let per_cycle = per_second / (clock_ghz * 1e9);
    let pipes = per_cycle.round().max(1.0) as usize;
    CorePeak {
        clock_ghz,
        lanes,
        pipes,
        gflops: lanes as f64 * 2.0 * pipes as f64 * clock_ghz,
    }
}

/// This thread's CPU time in seconds (wall time where that is not available).
fn cpu_seconds() -> f64 {
    if let Some(seconds) = super::cpu_seconds(super::CpuClock::Thread) {
        return seconds;
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// Cycles per second from 10 dependent 1-cycle register adds per loop iteration.
#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> f64 {
    let iterations: u64 = 20_000_000;
    let start = cpu_seconds();
    let mut x: u64 = 0;
    let y: u64 = 3;
    let mut n = iterations;
    // SAFETY: register-only arithmetic; the loop ends when n reaches 0.
    unsafe {
        std::arch::asm!(
            "2:",
            "add {x}, {y}", "add {x}, {y}", "add {x}, {y}", "add {x}, {y}", "add {x}, {y}",
            "add {x}, {y}", "add {x}, {y}", "add {x}, {y}", "add {x}, {y}", "add {x}, {y}",
            "dec {n}",
            "jnz 2b",
            x = inout(reg) x,
            y = in(reg) y,
            n = inout(reg) n,
            options(nomem, nostack),
        );
    }
    std::hint::black_box((x, n));
    (iterations * 10) as f64 / (cpu_seconds() - start) / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn clock_ghz() -> f64 {
    f64::NAN
}

/// (lanes, FMA instructions per second) at the widest FMA width available.
fn fma_throughput() -> (usize, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected at run time.
            return (16, best_of(|n| unsafe { fma512(n) }));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA detected at run time.
            return (8, best_of(|n| unsafe { fma256(n) }));
        }
    }
    (0, 0.0)
}

fn best_of(run: impl Fn(u64) -> f32) -> f64 {
    let iterations = 10_000_000u64;
    (0..3)
        .map(|_| {
            let start = cpu_seconds();
            std::hint::black_box(run(iterations));
            // 12 independent FMAs per iteration.
            (iterations * 12) as f64 / (cpu_seconds() - start)
        })
        .fold(0.0, f64::max)
}

macro_rules! fma_chains {
    ($name:ident, $feature:literal, $vec:ty, $set1:ident, $fmadd:ident, $add:ident, $store:ident, $lanes:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(iterations: u64) -> f32 {
            use std::arch::x86_64::*;
            let a = $set1(0.999_999);
            let b = $set1(1e-7);
            // 12 independent accumulators cover 4-cycle FMA latency on 2 pipes with room.
            let mut acc: [$vec; 12] = [$set1(1.0); 12];
            for _ in 0..iterations {
                for v in acc.iter_mut() {
                    *v = $fmadd(*v, a, b);
                }
            }
            let mut sum = acc[0];
            for v in &acc[1..] {
                sum = $add(sum, *v);
            }
            let mut out = [0.0f32; $lanes];
            // SAFETY: `out` holds one vector.
            unsafe { $store(out.as_mut_ptr(), sum) };
            out.iter().sum()
        }
    };
}

fma_chains!(
    fma512,
    "avx512f",
    __m512,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_storeu_ps,
    16
);
fma_chains!(
    fma256,
    "avx2,fma",
    __m256,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps,
    8
);
