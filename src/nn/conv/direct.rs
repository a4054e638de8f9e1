//! Direct conv3d kernels for stride-1, undilated convolutions, written for AVX-512 and for
//! AVX2 + FMA (chosen at run time).
//!
//! Why: im2col copies every input voxel k³ times, and with the 8–32 output channels of a
//! Retina U-Net's thin layers the gemm that follows cannot fill its micro-kernel; those
//! layers ran at 5–15 % of the core's peak. These kernels read the zero-padded input in
//! place and keep every accumulator in a register.
//!
//! The layout stays NCDHW. A vector is `LANES` consecutive voxels of one row (16 on AVX-512,
//! 8 on AVX2); the last vector of a row is stored (and, for `dY`, loaded) with a lane mask,
//! so any width works. Input loads past a row's end read the next row's values, which only
//! meet masked-off lanes; the padded buffer has slack at its end for the last row.
//!
//! - **Forward**: a tile of `R` output channels × `T` output vectors; per input row of the
//!   im2col matrix (input channel, tap) it loads `T` input vectors and broadcasts `R`
//!   weights: `R · T` FMAs for `R + T` loads.
//! - **Input gradient**: the same forward kernel on `dY` padded by `k − 1 − p`, with the
//!   kernel transposed (in ↔ out) and flipped.
//! - **Weight gradient**: a tile of `A` output channels × `B` im2col rows accumulates over
//!   the voxels of a chunk of depth slices: `A` loads of `dY` and `B` input loads give
//!   `A · B` FMAs; the lanes are summed once per [`WEIGHT_TILE_VECTORS`] vectors, and the
//!   chunks' partial gradients in chunk order, so the result does not depend on the number
//!   of threads. The tile leaves room for `A` gradients and the inputs in the vector
//!   registers: on AVX-512 a 4 × 6 tile (24 accumulators) made LLVM shuffle and spill
//!   accumulators in every iteration, and 4 × 5 runs 75 → 93 GFLOP/s at 64³ × 32 channels.

use rayon::prelude::*;

use super::buffer;
use super::kernels::{Geometry, in_chunk_waves};

pub(crate) use crate::util::isa::Isa;

/// Whether the direct kernels compute this convolution: stride 1, no dilation, and padding
/// smaller than the kernel on every axis (so that the input gradient is again a convolution
/// with non-negative padding).
pub(crate) fn applies(g: &Geometry) -> bool {
    g.stride == [1; 3] && g.dilation == [1; 3] && (0..3).all(|i| g.padding[i] < g.kernel[i])
}

/// Which result of a convolution a kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The output.
    Forward,
    /// The input gradient.
    InputGrad,
    /// The weight gradient.
    WeightGrad,
}

impl Isa {
    /// Floats per vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }
}

/// Whether the direct kernel beats im2col + gemm for this pass, by a fixed rule (never by
/// timing at run time, which would make results depend on the machine's load). The rule
/// follows `detlab bench conv` (1 thread, AVX-512, the quickstart's shapes):
/// - direct kernels reach 135–140 GFLOP/s forward and 80–93 for the weight gradient when
///   the rows fill their vectors, and about half that when half the lanes are idle
///   (8³ on AVX-512); below half they lose (4³: 27 against 30–73);
/// - im2col + gemm gains with the output channels (gemm's tall micro-kernel fills): 24
///   GFLOP/s forward at 8 channels, 65 at 32, 110 at 162, where it wins the gradients;
/// - 1³ convolutions need no im2col, and there the plain gemm wins everywhere;
/// - wide layers with full vectors (`--set resenc_l`, 16³–32³ × 64–256 channels): the direct
///   weight gradient runs at 105–110 against gemm's 88–94, and the direct input gradient at
///   140–155 against 108–120 where the forward's input has 64 channels or more (with 32 and
///   162 output channels gemm wins it, 131 against 113).
pub(crate) fn preferred(isa: Isa, g: &Geometry, pass: Pass) -> bool {
    if !applies(g) || g.kernel == [1, 1, 1] {
        return false;
    }
    // The forward kernel writes rows of the output; for the input gradient, of the input.
    let width = match pass {
        Pass::InputGrad => g.input[2],
        Pass::Forward | Pass::WeightGrad => g.output[2],
    };
    let lanes = isa.lanes();
    let full = width.div_ceil(lanes) * lanes;
    if width < 8 || 2 * width < full {
        return false;
    }
    match pass {
        Pass::Forward => width == full || g.channels_out <= 64,
        Pass::InputGrad => g.channels_out <= 64 || (width == full && g.channels_in >= 64),
        Pass::WeightGrad => g.channels_out <= 64 || width == full,
    }
}

/// Every channel of `[N · C, D, H, W]` zero-padded by `padding` on both sides of each axis,
/// with slack at the end for full-vector reads past the last row.
pub(crate) struct Padded {
    data: Vec<f32>,
    /// `[D + 2pd, H + 2ph, W + 2pw]`.
    dims: [usize; 3],
}

/// Slack after the last padded row: two vectors of the widest instruction set.
const SLACK: usize = 32;

impl Padded {
    /// Every value is written once (halo zeros, rows copied), with no zeroing pass first.
    fn new(x: &[f32], size: [usize; 3], padding: [usize; 3]) -> Self {
        let [d, h, w] = size;
        let dims: [usize; 3] = std::array::from_fn(|i| size[i] + 2 * padding[i]);
        let [_, hp, wp] = dims;
        let volume = d * h * w;
        let channel = dims.iter().product::<usize>();
        let channels = x.len() / volume.max(1);
        let mut data = buffer::unwritten(channels * channel + SLACK);
        let (body, slack) = data.split_at_mut(channels * channel);
        buffer::fill(slack, 0.0);
        body.par_chunks_mut(channel)
            .zip(x.par_chunks(volume))
            .for_each(|(dst, src)| {
                for (zp, plane) in dst.chunks_exact_mut(hp * wp).enumerate() {
                    let z = zp.wrapping_sub(padding[0]);
                    if z >= d {
                        buffer::fill(plane, 0.0);
                        continue;
                    }
                    for (yp, row) in plane.chunks_exact_mut(wp).enumerate() {
                        let y = yp.wrapping_sub(padding[1]);
                        if y >= h {
                            buffer::fill(row, 0.0);
                            continue;
                        }
                        let (left, rest) = row.split_at_mut(padding[2]);
                        let (middle, right) = rest.split_at_mut(w);
                        buffer::fill(left, 0.0);
                        buffer::copy(middle, &src[(z * h + y) * w..][..w]);
                        buffer::fill(right, 0.0);
                    }
                }
            });
        // SAFETY: the slack and every plane, row, halo and interior of every channel were
        // written above (`x` holds `channels` whole volumes).
        let data = unsafe { buffer::written(data) };
        Self { data, dims }
    }

    fn channel_len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Offsets in a padded channel-major sample of every im2col row `(channel, kd, kh, kw)`, in
/// the weight's memory order.
fn row_offsets(channels: usize, kernel: [usize; 3], padded: &Padded) -> Vec<usize> {
    let [_, hp, wp] = padded.dims;
    let [kd, kh, kw] = kernel;
    let channel = padded.channel_len();
    let mut offsets = Vec::with_capacity(channels * kd * kh * kw);
    for c in 0..channels {
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    offsets.push(c * channel + (a * hp + b) * wp + e);
                }
            }
        }
    }
    offsets
}

/// Forward: `Y = conv(X, W) (+ bias)`, `[N, C_out, D', H', W']`.
pub(crate) fn forward(
    isa: Isa,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
) -> Vec<f32> {
    debug_assert!(applies(g));
    let padded = Padded::new(x, g.input, g.padding);
    let rows = row_offsets(g.channels_in, g.kernel, &padded);
    let mut y = buffer::unwritten(g.batch * g.channels_out * g.output.iter().product::<usize>());
    let job = ForwardJob {
        padded: &padded,
        rows: &rows,
        weight,
        bias,
        g,
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::forward(&job, &mut y),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::forward(&job, &mut y),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no direct kernels on this architecture"),
    }
    // SAFETY: the kernels store every output value (see `forward_slice`).
    unsafe { buffer::written(y) }
}

/// Input gradient: the forward kernel on `dY` padded by `k − 1 − p`, with the kernel
/// transposed (input ↔ output channels) and flipped on every axis.
pub(crate) fn input_grad(isa: Isa, weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let [kd, kh, kw] = g.kernel;
    let taps = kd * kh * kw;
    let (ci, co) = (g.channels_in, g.channels_out);
    let mut flipped = vec![0.0f32; weight.len()];
    for o in 0..co {
        for c in 0..ci {
            for t in 0..taps {
                flipped[(c * co + o) * taps + (taps - 1 - t)] = weight[(o * ci + c) * taps + t];
            }
        }
    }
    let padding: [usize; 3] = std::array::from_fn(|i| g.kernel[i] - 1 - g.padding[i]);
    let [d, h, w] = g.output;
    let transposed = Geometry::new(
        [g.batch, co, d, h, w],
        [ci, co, kd, kh, kw],
        [1; 3],
        padding,
        [1; 3],
    )
    .expect("the transposed convolution of a valid one is valid");
    debug_assert_eq!(transposed.output, g.input);
    forward(isa, dy, &flipped, None, &transposed)
}

/// Weight gradient `[C_out, C_in, kd, kh, kw]`: `Σ dY · X` over batch and space.
pub(crate) fn weight_grad(isa: Isa, x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    debug_assert!(applies(g));
    let padded = Padded::new(x, g.input, g.padding);
    let rows = row_offsets(g.channels_in, g.kernel, &padded);
    let job = WeightJob {
        padded: &padded,
        rows: &rows,
        dy,
        g,
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::weight_grad(&job),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::weight_grad(&job),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no direct kernels on this architecture"),
    }
}

/// What the forward kernel reads.
struct ForwardJob<'a> {
    padded: &'a Padded,
    /// Offset of every im2col row in a padded sample.
    rows: &'a [usize],
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    g: &'a Geometry,
}

/// What the weight-gradient kernel reads.
struct WeightJob<'a> {
    padded: &'a Padded,
    rows: &'a [usize],
    dy: &'a [f32],
    g: &'a Geometry,
}

/// A raw output pointer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes its own disjoint set of elements (see the callers).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// Output vectors a weight-gradient tile sums over before its lanes are summed: few enough
/// that the tile's `dY` rows and input rows stay in the L1 cache while the tiles of every
/// im2col row pass over them (whole 64³ depth slices, 256 vectors, ran from the L2 cache:
/// 70 GFLOP/s against 93 at 64 vectors, `detlab bench conv --set resenc_l`).
const WEIGHT_TILE_VECTORS: usize = 64;

/// Output depth slices per weight-gradient chunk: enough vectors that summing the lanes once
/// per chunk costs little, and few enough that a chunk's `dY` stays in the L2 cache.
fn slices_per_chunk(g: &Geometry, lanes: usize) -> usize {
    let [d, h, w] = g.output;
    let vectors_per_slice = h * w.div_ceil(lanes);
    64usize
        .div_ceil(vectors_per_slice.max(1))
        .clamp(1, d.max(1))
}

/// The kernels of one instruction set. The including module defines `LANES`, the vector
/// type `V` and the helpers `zero`, `set1`, `loadu`, `fmadd`, `load_first`, `store_first`
/// and `hsum`, all with the same target feature.
#[cfg(target_arch = "x86_64")]
macro_rules! direct_kernels {
    ($feature:literal, forward_tile: [$r:literal, $t:literal], weight_tile: [$a:literal, $b:literal]) => {
        use rayon::prelude::*;

        use super::{
            ForwardJob, SharedOut, WEIGHT_TILE_VECTORS, WeightJob, in_chunk_waves, slices_per_chunk,
        };
        use std::mem::MaybeUninit;

        /// Output channels × output vectors of a forward tile.
        const R: usize = $r;
        const T: usize = $t;
        /// Output channels × im2col rows of a weight-gradient tile.
        const A: usize = $a;
        const B: usize = $b;

        pub(in crate::nn::conv) fn forward(job: &ForwardJob, y: &mut [MaybeUninit<f32>]) {
            let g = job.g;
            let (ci, co) = (g.channels_in, g.channels_out);
            let rows = job.rows.len();
            let taps = rows / ci;
            let blocks = co.div_ceil(R);
            // Weights packed as [block][row][R], zero for the channels past C_out.
            let mut packed = vec![0.0f32; blocks * rows * R];
            for o in 0..co {
                for row in 0..rows {
                    packed[((o / R) * rows + row) * R + o % R] = job.weight[o * ci * taps + row];
                }
            }
            let [od, oh, ow] = g.output;
            let out_volume = od * oh * ow;
            let sample_in = ci * job.padded.channel_len();
            let out = SharedOut(y.as_mut_ptr().cast::<f32>());
            let (padded, offsets) = (&job.padded, job.rows);
            // Input rows (channel, kd, kh) a row of tiles reads: about 24 KB of them per chunk.
            let [kd, kh, _] = g.kernel;
            let line = kd * kh * padded.dims[2] * size_of::<f32>();
            let rows_per_chunk = (24 * 1024 / line.max(1)).clamp(1, ci) * taps;
            (0..g.batch * blocks * od).into_par_iter().for_each(|task| {
                // Captures the whole `SharedOut` (Send), not its raw pointer field.
                #[allow(clippy::redundant_locals)]
                let out = out;
                let (n, block, d) = (task / (blocks * od), task / od % blocks, task % od);
                let first = block * R;
                let channels = (co - first).min(R);
                let mut bias = [0.0f32; R];
                if let Some(b) = job.bias {
                    bias[..channels].copy_from_slice(&b[first..first + channels]);
                }
                // SAFETY: the task writes output slice `d` of channels `first..first +
                // channels` of sample `n` only, and no other task does; every input read
                // stays inside the padded buffer (its slack covers full-vector reads past
                // the last row) and every weight read inside `packed`.
                unsafe {
                    forward_slice(
                        padded.data.as_ptr().add(n * sample_in),
                        offsets,
                        packed.as_ptr().add(block * rows * R),
                        &bias,
                        out.0.add((n * co + first) * out_volume + d * oh * ow),
                        out_volume,
                        channels,
                        d,
                        [oh, ow],
                        padded.dims,
                        rows_per_chunk,
                    );
                }
            });
        }

        /// One output depth slice of `R` channels, in tiles of `T` vectors.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn forward_slice(
            x: *const f32,
            offsets: &[usize],
            weight: *const f32,
            bias: &[f32; R],
            y: *mut f32,
            out_volume: usize,
            channels: usize,
            d: usize,
            [oh, ow]: [usize; 2],
            [_, hp, wp]: [usize; 3],
            rows_per_chunk: usize,
        ) {
            let vectors = ow.div_ceil(LANES);
            let positions = oh * vectors;
            // Input channels in chunks whose rows stay in the L1 cache while a row of tiles
            // passes over them; later chunks add to what the earlier ones stored.
            for row0 in (0..offsets.len()).step_by(rows_per_chunk) {
                let chunk = &offsets[row0..(row0 + rows_per_chunk).min(offsets.len())];
                let chunk_weight = unsafe { weight.add(row0 * R) };
                let mut p = 0;
                while p < positions {
                    let count = (positions - p).min(T);
                    let mut bases = [0usize; T];
                    let mut outs = [y; T];
                    let mut lanes = [0usize; T];
                    for t in 0..T {
                        // A short last tile repeats its last vector and stores it once.
                        let q = p + t.min(count - 1);
                        let (h, v) = (q / vectors, q % vectors);
                        bases[t] = (d * hp + h) * wp + v * LANES;
                        outs[t] = unsafe { y.add(h * ow + v * LANES) };
                        lanes[t] = (ow - v * LANES).min(LANES);
                    }
                    let mut init = [[zero(); T]; R];
                    for r in 0..R {
                        for t in 0..T {
                            init[r][t] = if row0 == 0 {
                                set1(bias[r])
                            } else if r < channels {
                                unsafe { load_first(outs[t].add(r * out_volume), lanes[t]) }
                            } else {
                                zero()
                            };
                        }
                    }
                    let acc = unsafe { forward_tile(x, &bases, chunk, chunk_weight, init) };
                    for r in 0..channels {
                        for t in 0..count {
                            unsafe {
                                store_first(outs[t].add(r * out_volume), lanes[t], acc[r][t])
                            };
                        }
                    }
                    p += count;
                }
            }
        }

        /// The accumulators of one tile: `init` + Σ over im2col rows of input × weight.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn forward_tile(
            x: *const f32,
            bases: &[usize; T],
            offsets: &[usize],
            weight: *const f32,
            init: [[V; T]; R],
        ) -> [[V; T]; R] {
            let mut acc = init;
            let starts: [*const f32; T] = std::array::from_fn(|t| unsafe { x.add(bases[t]) });
            let mut w = weight;
            for &offset in offsets {
                let mut inputs = [zero(); T];
                for t in 0..T {
                    inputs[t] = unsafe { loadu(starts[t].add(offset)) };
                }
                for r in 0..R {
                    let wr = set1(unsafe { *w.add(r) });
                    for t in 0..T {
                        acc[r][t] = fmadd(inputs[t], wr, acc[r][t]);
                    }
                }
                w = unsafe { w.add(R) };
            }
            acc
        }

        pub(in crate::nn::conv) fn weight_grad(job: &WeightJob) -> Vec<f32> {
            let g = job.g;
            let (ci, co) = (g.channels_in, g.channels_out);
            let rows = job.rows.len();
            let [od, oh, ow] = g.output;
            let out_volume = od * oh * ow;
            let sample_in = ci * job.padded.channel_len();
            let per = slices_per_chunk(g, LANES);
            let chunks: Vec<(usize, usize, usize)> = (0..g.batch)
                .flat_map(|n| {
                    (0..od)
                        .step_by(per)
                        .map(move |d0| (n, d0, (d0 + per).min(od)))
                })
                .collect();
            let mut dw = vec![0.0f32; co * rows];
            in_chunk_waves(
                &chunks,
                || vec![0.0f32; co * rows],
                |&(n, d0, d1), partial: &mut Vec<f32>| {
                    let [_, hp, wp] = job.padded.dims;
                    let per_row = ow.div_ceil(LANES);
                    let vectors: Vec<(usize, usize, usize)> = (d0..d1)
                        .flat_map(|d| (0..oh).map(move |h| (d, h)))
                        .flat_map(|(d, h)| {
                            (0..per_row).map(move |v| {
                                (
                                    (d * oh + h) * ow + v * LANES,
                                    (d * hp + h) * wp + v * LANES,
                                    (ow - v * LANES).min(LANES),
                                )
                            })
                        })
                        .collect();
                    let x = unsafe { job.padded.data.as_ptr().add(n * sample_in) };
                    let dy = &job.dy[n * co * out_volume..][..co * out_volume];
                    partial.iter_mut().for_each(|p| *p = 0.0);
                    for vectors in vectors.chunks(WEIGHT_TILE_VECTORS) {
                        // SAFETY: `x` is sample `n` of the padded input, and `vectors`
                        // hold offsets inside it and inside `dy`.
                        unsafe { weight_tiles(job, x, dy, vectors, partial) };
                    }
                },
                |_, partial| dw.iter_mut().zip(partial).for_each(|(sum, p)| *sum += p),
            );
            dw
        }

        /// Add `Σ dY · X` over `vectors` to `partial` `[C_out, rows]`, tile by tile.
        ///
        /// # Safety
        /// `x` points at one sample of `job.padded`, and every input offset of `vectors`
        /// (plus a row offset of `job.rows` and one vector) stays inside that buffer.
        unsafe fn weight_tiles(
            job: &WeightJob,
            x: *const f32,
            dy: &[f32],
            vectors: &[(usize, usize, usize)],
            partial: &mut [f32],
        ) {
            let (co, rows) = (job.g.channels_out, job.rows.len());
            let out_volume: usize = job.g.output.iter().product();
            for first in (0..co).step_by(A) {
                let channels = (co - first).min(A);
                // A short last block repeats its last channel and keeps it once.
                let dys: [*const f32; A] = std::array::from_fn(|a| {
                    dy[(first + a.min(channels - 1)) * out_volume..].as_ptr()
                });
                for row0 in (0..rows).step_by(B) {
                    let count = (rows - row0).min(B);
                    let offsets: [usize; B] =
                        std::array::from_fn(|b| job.rows[row0 + b.min(count - 1)]);
                    // SAFETY: `dY` reads stay inside the sample's channels (masked
                    // at row ends) and input reads inside the padded buffer (its
                    // slack covers full-vector reads past the last row).
                    let sums = unsafe { weight_tile(dys, x, &offsets, vectors) };
                    for a in 0..channels {
                        for b in 0..count {
                            partial[(first + a) * rows + row0 + b] += sums[a][b];
                        }
                    }
                }
            }
        }

        /// `Σ dY[channel a] · X[row b]` over the vectors of a chunk, per pair. One flat
        /// loop over `vectors` (`dY` offset, input offset, lanes): with the accumulators
        /// carried through nested depth/row/vector loops LLVM spilled half of them.
        #[target_feature(enable = $feature)]
        unsafe fn weight_tile(
            dy: [*const f32; A],
            x: *const f32,
            offsets: &[usize; B],
            vectors: &[(usize, usize, usize)],
        ) -> [[f32; B]; A] {
            let mut acc = [[zero(); B]; A];
            let starts: [*const f32; B] = std::array::from_fn(|b| unsafe { x.add(offsets[b]) });
            for &(out_at, in_at, lanes) in vectors {
                let mut grads = [zero(); A];
                for a in 0..A {
                    grads[a] = unsafe { load_first(dy[a].add(out_at), lanes) };
                }
                for b in 0..B {
                    let input = unsafe { loadu(starts[b].add(in_at)) };
                    for a in 0..A {
                        acc[a][b] = fmadd(grads[a], input, acc[a][b]);
                    }
                }
            }
            let mut sums = [[0.0f32; B]; A];
            for a in 0..A {
                for b in 0..B {
                    sums[a][b] = hsum(acc[a][b]);
                }
            }
            sums
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const LANES: usize = 16;
    type V = __m512;

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn zero() -> V {
        _mm512_setzero_ps()
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn set1(value: f32) -> V {
        _mm512_set1_ps(value)
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn loadu(at: *const f32) -> V {
        unsafe { _mm512_loadu_ps(at) }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn fmadd(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }

    fn mask(lanes: usize) -> __mmask16 {
        if lanes >= LANES {
            0xffff
        } else {
            (1u16 << lanes) - 1
        }
    }

    /// The first `lanes` values at `at`, zero in the other lanes (which are not read).
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn load_first(at: *const f32, lanes: usize) -> V {
        unsafe { _mm512_maskz_loadu_ps(mask(lanes), at) }
    }

    /// Store the first `lanes` values of `value` at `at`.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn store_first(at: *mut f32, lanes: usize, value: V) {
        unsafe { _mm512_mask_storeu_ps(at, mask(lanes), value) }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    fn hsum(value: V) -> f32 {
        _mm512_reduce_add_ps(value)
    }

    // 8 × 3 = 24 forward accumulators and 4 × 6 = 24 weight-gradient accumulators of the 32
    // registers, the rest for the loaded operands.
    direct_kernels!("avx512f,avx512vl", forward_tile: [8, 3], weight_tile: [4, 5]);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const LANES: usize = 8;
    type V = __m256;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn zero() -> V {
        _mm256_setzero_ps()
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn set1(value: f32) -> V {
        _mm256_set1_ps(value)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn loadu(at: *const f32) -> V {
        unsafe { _mm256_loadu_ps(at) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fmadd(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mask(lanes: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes.min(LANES) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The first `lanes` values at `at`, zero in the other lanes (which are not read).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_first(at: *const f32, lanes: usize) -> V {
        if lanes >= LANES {
            unsafe { _mm256_loadu_ps(at) }
        } else {
            unsafe { _mm256_maskload_ps(at, mask(lanes)) }
        }
    }

    /// Store the first `lanes` values of `value` at `at`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store_first(at: *mut f32, lanes: usize, value: V) {
        if lanes >= LANES {
            unsafe { _mm256_storeu_ps(at, value) }
        } else {
            unsafe { _mm256_maskstore_ps(at, mask(lanes), value) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(value: V) -> f32 {
        let half = _mm_add_ps(
            _mm256_castps256_ps128(value),
            _mm256_extractf128_ps(value, 1),
        );
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    // 4 × 3 = 12 forward and 2 × 6 = 12 weight-gradient accumulators of the 16 registers.
    direct_kernels!("avx2,fma", forward_tile: [4, 3], weight_tile: [2, 6]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv::kernels;

    use crate::nn::conv::uniform_values as values;

    fn max_relative(a: &[f32], e: &[f32]) -> f32 {
        assert_eq!(a.len(), e.len());
        let scale = e.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(e)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Every instruction set's direct kernels against the im2col + gemm kernels (which the
    /// conv tests hold against burn's own conv3d).
    fn check(x: [usize; 5], weight: [usize; 5], padding: [usize; 3]) {
        let g = Geometry::new(x, weight, [1; 3], padding, [1; 3]).expect("valid geometry");
        assert!(applies(&g));
        let xs = values(x.iter().product(), 1);
        let ws = values(weight.iter().product(), 2);
        let bias = values(weight[0], 3);
        let dy = values(g.output_shape().iter().product(), 4);
        let expected = [
            kernels::im2col_forward(&xs, &ws, Some(&bias), &g),
            kernels::im2col_input_grad(&ws, &dy, &g),
            kernels::im2col_weight_grad(&xs, &dy, &g),
        ];
        let isas = Isa::available();
        if isas.is_empty() {
            eprintln!("no AVX2 or AVX-512 on this CPU: the direct kernels are not used");
        }
        for isa in isas {
            let got = [
                forward(isa, &xs, &ws, Some(&bias), &g),
                input_grad(isa, &ws, &dy, &g),
                weight_grad(isa, &xs, &dy, &g),
            ];
            for (name, (a, e)) in ["forward", "input grad", "weight grad"]
                .iter()
                .zip(got.iter().zip(&expected))
            {
                let err = max_relative(a, e);
                assert!(
                    err < 1e-5,
                    "{isa:?} {name}: error {err} for x {x:?} weight {weight:?} padding {padding:?}"
                );
            }
        }
    }

    #[test]
    fn cubic_kernels_match_im2col_on_full_and_partial_vectors() {
        // Widths 16 and 32 fill AVX-512 vectors; 5, 9 and 21 end in partial ones.
        check([2, 3, 4, 5, 16], [5, 3, 3, 3, 3], [1; 3]);
        check([1, 2, 6, 7, 21], [9, 2, 3, 3, 3], [1; 3]);
        check([2, 4, 3, 3, 5], [3, 4, 3, 3, 3], [1; 3]);
        check([1, 1, 4, 4, 32], [17, 1, 3, 3, 3], [1; 3]);
    }

    #[test]
    fn non_cubic_kernels_padding_and_pointwise_match_im2col() {
        check([1, 3, 5, 6, 9], [4, 3, 1, 3, 5], [0, 1, 2]);
        check([2, 6, 4, 5, 7], [3, 6, 1, 1, 1], [0; 3]);
        check([1, 2, 7, 6, 5], [2, 2, 3, 3, 3], [0; 3]);
        check([1, 2, 5, 5, 5], [3, 2, 5, 5, 5], [2; 3]);
        // Many channels: several output-channel blocks and a row count no tile divides.
        check([1, 13, 4, 4, 20], [19, 13, 3, 3, 3], [1; 3]);
        // Rows this wide put one input channel in each L1 chunk of the forward kernel,
        // so later chunks add to the stored partial sums.
        check([1, 3, 3, 3, 350], [2, 3, 3, 3, 3], [1; 3]);
        // 45 rows × 2 vectors = 90 vectors per depth slice: a weight-gradient chunk sums
        // its tiles over two runs of vectors (64 + 26, `WEIGHT_TILE_VECTORS`).
        check([1, 2, 3, 45, 32], [6, 2, 3, 3, 3], [1; 3]);
    }
}
