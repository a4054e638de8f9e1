//! im2col / col2im + gemm conv3d kernels (one group, any kernel, stride, padding, dilation).
//!
//! im2col rows are `(c_in, kd, kh, kw)` in the weight's memory order, so the weight is the
//! matrix `[C_out, C_in·k³]` as stored; columns are output voxels of a chunk of whole depth
//! slices of one sample.

use super::direct::{self, Isa, Pass};
use super::*;

/// The direct kernels' instruction set for this pass of a convolution, or `None` for
/// im2col + gemm.
fn direct_isa(g: &Geometry, pass: Pass) -> Option<Isa> {
    Isa::best().filter(|&isa| direct::preferred(isa, g, pass))
}

/// Forward `[N, C_out, D', H', W']`: the direct kernels where they apply, else im2col + gemm.
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    match direct_isa(g, Pass::Forward) {
        Some(isa) => direct::forward(isa, x, weight, bias, g),
        None => im2col_forward(x, weight, bias, g),
    }
}

/// Weight gradient `[C_out, C_in, kd, kh, kw]`.
pub fn weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    match direct_isa(g, Pass::WeightGrad) {
        Some(isa) => direct::weight_grad(isa, x, dy, g),
        None => im2col_weight_grad(x, dy, g),
    }
}

/// Input gradient `[N, C_in, D, H, W]`.
pub fn input_grad(weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    match direct_isa(g, Pass::InputGrad) {
        Some(isa) => direct::input_grad(isa, weight, dy, g),
        None => im2col_input_grad(weight, dy, g),
    }
}

/// Shapes and options of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
}

impl Geometry {
    /// The geometry of `x` `[N, C_in, D, H, W]` convolved with `weight`
    /// `[C_out, C_in, kd, kh, kw]`; `None` when the shapes do not fit or the output is
    /// empty.
    pub fn new(
        x: [usize; 5],
        weight: [usize; 5],
        stride: [usize; 3],
        padding: [usize; 3],
        dilation: [usize; 3],
    ) -> Option<Self> {
        let [batch, channels_in, d, h, w] = x;
        let [channels_out, weight_in, kd, kh, kw] = weight;
        if weight_in != channels_in || stride.contains(&0) || dilation.contains(&0) {
            return None;
        }
        let input = [d, h, w];
        let kernel = [kd, kh, kw];
        let mut output = [0; 3];
        for i in 0..3 {
            let span = dilation[i] * (kernel[i].checked_sub(1)?) + 1;
            let padded = input[i] + 2 * padding[i];
            if padded < span {
                return None;
            }
            output[i] = (padded - span) / stride[i] + 1;
        }
        let g = Self {
            batch,
            channels_in,
            channels_out,
            input,
            output,
            kernel,
            stride,
            padding,
            dilation,
        };
        (g.batch > 0 && g.channels_in > 0 && g.channels_out > 0 && g.input_volume() > 0)
            .then_some(g)
    }

    pub fn output_shape(&self) -> [usize; 5] {
        self.output_shape_with(self.channels_out)
    }

    pub fn output_shape_with(&self, channels: usize) -> [usize; 5] {
        let [d, h, w] = self.output;
        [self.batch, channels, d, h, w]
    }

    /// Values of one sample of the input (or input gradient): `C_in · D · H · W`.
    fn input_len(&self) -> usize {
        self.channels_in * self.input_volume()
    }

    /// Values of one sample of the output (or output gradient): `C_out · D' · H' · W'`.
    fn output_len(&self) -> usize {
        self.channels_out * self.output_volume()
    }

    fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Rows of the im2col matrix: `C_in · k³`.
    fn rows(&self) -> usize {
        self.channels_in * self.kernel_volume()
    }

    fn input_volume(&self) -> usize {
        self.input.iter().product()
    }

    fn output_volume(&self) -> usize {
        self.output.iter().product()
    }

    /// A 1³ convolution without stride or padding: the input is its own im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1, 1] && self.stride == [1, 1, 1] && self.padding == [0, 0, 0]
    }

    /// Output depth slices per chunk so that one im2col chunk stays near the budget.
    fn slices_per_chunk(&self) -> usize {
        let slice = self.rows() * self.output[1] * self.output[2] * size_of::<f32>();
        (COLUMN_BUFFER_BYTES / slice.max(1)).clamp(1, self.output[0].max(1))
    }

    /// Chunks `(sample, first depth slice, end depth slice)` covering the output.
    pub fn chunks(&self) -> Vec<(usize, usize, usize)> {
        let per = self.slices_per_chunk();
        (0..self.batch)
            .flat_map(|n| {
                (0..self.output[0])
                    .step_by(per)
                    .map(move |d0| (n, d0, (d0 + per).min(self.output[0])))
            })
            .collect()
    }

    /// Output positions `[lo, hi)` along `axis` whose input index for kernel tap `tap`
    /// lies inside the input, and the input index of `lo`.
    fn valid_range(&self, axis: usize, tap: usize) -> (usize, usize, usize) {
        let stride = self.stride[axis];
        let offset = (tap * self.dilation[axis]) as i64 - self.padding[axis] as i64;
        let lo = if offset >= 0 {
            0
        } else {
            ((-offset) as usize).div_ceil(stride)
        };
        let limit = self.input[axis] as i64 - offset;
        let hi = if limit <= 0 {
            0
        } else {
            (limit as usize).div_ceil(stride)
        };
        let hi = hi.min(self.output[axis]);
        let lo = lo.min(hi);
        let first = ((lo * stride) as i64 + offset).max(0) as usize;
        (lo, hi, first)
    }

    fn tap(&self, row: usize) -> [usize; 3] {
        let [_, kh, kw] = self.kernel;
        let t = row % self.kernel_volume();
        [t / (kh * kw), (t / kw) % kh, t % kw]
    }
}

thread_local! {
    /// Set while a chunk-parallel loop runs its per-chunk gemm on this thread.
    static SEQUENTIAL_GEMM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with single-threaded gemms on this thread (the caller parallelises over chunks).
fn sequential_gemm<R>(f: impl FnOnce() -> R) -> R {
    let before = SEQUENTIAL_GEMM.with(|c| c.replace(true));
    let result = f();
    SEQUENTIAL_GEMM.with(|c| c.set(before));
    result
}

/// Run `work` on every chunk in parallel, in waves of one chunk per thread, each chunk with
/// a slot of buffers from `slot` that is reused by later waves (fresh multi-megabyte
/// buffers would be page-faulted in on every chunk); gemms inside `work` run
/// single-threaded, as a gemm with C_out = 16–64 rows does not split well over threads.
/// `gather` then sees every chunk with its slot, sequentially and in chunk order, so the
/// result does not depend on the number of threads.
pub(crate) fn in_chunk_waves<S: Send>(
    chunks: &[(usize, usize, usize)],
    slot: impl Fn() -> S,
    work: impl Fn(&(usize, usize, usize), &mut S) + Sync,
    mut gather: impl FnMut(&(usize, usize, usize), &S),
) {
    let wave = rayon::current_num_threads().max(1);
    let mut slots: Vec<S> = (0..wave.min(chunks.len())).map(|_| slot()).collect();
    for group in chunks.chunks(wave) {
        group
            .par_iter()
            .zip(slots.par_iter_mut())
            .for_each(|(chunk, slot)| sequential_gemm(|| work(chunk, slot)));
        for (chunk, slot) in group.iter().zip(&slots) {
            gather(chunk, slot);
        }
    }
}

fn parallelism() -> gemm::Parallelism {
    if rayon::current_num_threads() > 1 && !SEQUENTIAL_GEMM.with(|c| c.get()) {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// A strided matrix view: element `(i, j)` at `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
struct View {
    row_stride: isize,
    col_stride: isize,
}

const ROW_MAJOR: fn(usize) -> View = |cols| View {
    row_stride: cols as isize,
    col_stride: 1,
};
const COL_MAJOR: fn(usize) -> View = |rows| View {
    row_stride: 1,
    col_stride: rows as isize,
};

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_view: View,
    accumulate: bool,
    lhs: &[f32],
    lhs_view: View,
    rhs: &[f32],
    rhs_view: View,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |v: View, rows: usize, cols: usize| {
        (rows - 1) as isize * v.row_stride + (cols - 1) as isize * v.col_stride
    };
    assert!(last(dst_view, m, n) < dst.len() as isize, "gemm dst bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    let at = i as isize * dst_view.row_stride + j as isize * dst_view.col_stride;
                    dst[at as usize] = 0.0;
                }
            }
        }
        return;
    }
    assert!(last(lhs_view, m, k) < lhs.len() as isize, "gemm lhs bounds");
    assert!(last(rhs_view, k, n) < rhs.len() as isize, "gemm rhs bounds");
    // SAFETY: the three views stay inside their slices (asserted above, strides are
    // non-negative) and `dst` does not alias `lhs` or `rhs` (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_view.col_stride,
            dst_view.row_stride,
            accumulate,
            lhs.as_ptr(),
            lhs_view.col_stride,
            lhs_view.row_stride,
            rhs.as_ptr(),
            rhs_view.col_stride,
            rhs_view.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
}

/// Fill one im2col row (input channel `x_channel`, kernel tap `tap`) for the output depth
/// slices `[d0, d1)`.
fn im2col_row(row: &mut [f32], x_channel: &[f32], g: &Geometry, tap: [usize; 3], d0: usize) {
    let [_, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    let plane = out_h * out_w;
    let (d_lo, d_hi, d_first) = g.valid_range(0, tap[0]);
    let (h_lo, h_hi, h_first) = g.valid_range(1, tap[1]);
    let (w_lo, w_hi, w_first) = g.valid_range(2, tap[2]);
    let [sd, sh, sw] = g.stride;
    for (i, out_plane) in row.chunks_exact_mut(plane).enumerate() {
        let od = d0 + i;
        if od < d_lo || od >= d_hi || h_lo == h_hi || w_lo == w_hi {
            out_plane.fill(0.0);
            continue;
        }
        let id = d_first + (od - d_lo) * sd;
        out_plane[..h_lo * out_w].fill(0.0);
        out_plane[h_hi * out_w..].fill(0.0);
        for oh in h_lo..h_hi {
            let ih = h_first + (oh - h_lo) * sh;
            let src = &x_channel[(id * in_h + ih) * in_w..][..in_w];
            let out = &mut out_plane[oh * out_w..][..out_w];
            out[..w_lo].fill(0.0);
            out[w_hi..].fill(0.0);
            let out = &mut out[w_lo..w_hi];
            if sw == 1 {
                out.copy_from_slice(&src[w_first..w_first + out.len()]);
            } else {
                for (o, v) in out.iter_mut().zip(src[w_first..].iter().step_by(sw)) {
                    *o = *v;
                }
            }
        }
    }
}

/// Add one column-gradient row back into the input gradient of its channel (col2im).
fn col2im_row(row: &[f32], dx_channel: &mut [f32], g: &Geometry, tap: [usize; 3], d0: usize) {
    let [_, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    let plane = out_h * out_w;
    let (d_lo, d_hi, d_first) = g.valid_range(0, tap[0]);
    let (h_lo, h_hi, h_first) = g.valid_range(1, tap[1]);
    let (w_lo, w_hi, w_first) = g.valid_range(2, tap[2]);
    let [sd, sh, sw] = g.stride;
    if h_lo == h_hi || w_lo == w_hi {
        return;
    }
    for (i, out_plane) in row.chunks_exact(plane).enumerate() {
        let od = d0 + i;
        if od < d_lo || od >= d_hi {
            continue;
        }
        let id = d_first + (od - d_lo) * sd;
        for oh in h_lo..h_hi {
            let ih = h_first + (oh - h_lo) * sh;
            let dst = &mut dx_channel[(id * in_h + ih) * in_w..][..in_w];
            let src = &out_plane[oh * out_w..][w_lo..w_hi];
            if sw == 1 {
                for (d, s) in dst[w_first..w_first + src.len()].iter_mut().zip(src) {
                    *d += *s;
                }
            } else {
                for (d, s) in dst[w_first..].iter_mut().step_by(sw).zip(src) {
                    *d += *s;
                }
            }
        }
    }
}

/// im2col of output depth slices `[d0, d1)` of sample `x_sample` into `col` (rows × cols).
fn im2col(col: &mut [f32], x_sample: &[f32], g: &Geometry, d0: usize) {
    let volume = g.input_volume();
    let cols = col.len() / g.rows();
    col.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let channel = r / g.kernel_volume();
        im2col_row(
            row,
            &x_sample[channel * volume..][..volume],
            g,
            g.tap(r),
            d0,
        );
    });
}

/// Forward: `Y[n, :, chunk] = W [C_out, rows] · im2col(X)[rows, chunk] (+ bias)`.
pub fn im2col_forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (co, rows) = (g.channels_out, g.rows());
    let (in_volume, out_volume) = (g.input_volume(), g.output_volume());
    let plane = g.output[1] * g.output[2];
    let mut y = vec![0.0f32; g.batch * g.output_len()];
    if g.is_pointwise() {
        for n in 0..g.batch {
            matmul(
                [co, out_volume, rows],
                &mut y[n * g.output_len()..][..g.output_len()],
                ROW_MAJOR(out_volume),
                false,
                weight,
                ROW_MAJOR(rows),
                &x[n * g.input_len()..][..g.input_len()],
                ROW_MAJOR(in_volume),
            );
        }
    } else {
        // Per chunk: im2col into its own buffer, then `W · col` into an output buffer that
        // is copied into `y` afterwards.
        in_chunk_waves(
            &g.chunks(),
            || (Vec::new(), Vec::new()),
            |&(n, d0, d1), (col, out): &mut (Vec<f32>, Vec<f32>)| {
                let cols = (d1 - d0) * plane;
                col.resize(rows * cols, 0.0);
                out.resize(co * cols, 0.0);
                let x_sample = &x[n * g.input_len()..][..g.input_len()];
                im2col(col, x_sample, g, d0);
                // Computed as `outᵀ (cols × C_out) = colᵀ · Wᵀ` on the same buffers (only the
                // strides change): gemm's micro-kernels are tall (48 rows with AVX-512), so
                // the voxels belong on the row axis; with C_out = 8-16 rows they ran at 1/3-1/6
                // of their width (8 → 8 channels at 32³: 36 → 50 GFLOP/s).
                matmul(
                    [cols, co, rows],
                    out,
                    COL_MAJOR(cols),
                    false,
                    col,
                    COL_MAJOR(cols),
                    weight,
                    COL_MAJOR(rows),
                );
            },
            |&(n, d0, d1), (_, out)| {
                let cols = (d1 - d0) * plane;
                let y_sample = &mut y[n * g.output_len()..][..g.output_len()];
                for (channel, values) in out.chunks_exact(cols).enumerate() {
                    y_sample[channel * out_volume + d0 * plane..][..cols].copy_from_slice(values);
                }
            },
        );
    }
    if let Some(bias) = bias {
        y.par_chunks_mut(out_volume)
            .enumerate()
            .for_each(|(i, channel)| {
                let b = bias[i % co];
                channel.iter_mut().for_each(|v| *v += b);
            });
    }
    y
}

/// Weight gradient `[C_out, rows] = Σ_chunks dY[n, :, chunk] · im2col(X)[rows, chunk]ᵀ`.
pub fn im2col_weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (co, rows) = (g.channels_out, g.rows());
    let (in_volume, out_volume) = (g.input_volume(), g.output_volume());
    let plane = g.output[1] * g.output[2];
    // One partial gradient per chunk, computed in parallel with single-threaded gemms and
    // summed in chunk order: the result is the same for any number of threads.
    let mut dw = vec![0.0f32; co * rows];
    in_chunk_waves(
        &g.chunks(),
        || (Vec::new(), vec![0.0f32; co * rows]),
        |&(n, d0, d1), (col, partial): &mut (Vec<f32>, Vec<f32>)| {
            let x_sample = &x[n * g.input_len()..][..g.input_len()];
            let dy_sample = &dy[n * g.output_len()..][..g.output_len()];
            let cols = (d1 - d0) * plane;
            let (rhs, rhs_view): (&[f32], View) = if g.is_pointwise() {
                (&x_sample[d0 * plane..], COL_MAJOR(in_volume))
            } else {
                col.resize(rows * cols, 0.0);
                im2col(col, x_sample, g, d0);
                (&col[..], COL_MAJOR(cols))
            };
            matmul(
                [co, rows, cols],
                partial,
                ROW_MAJOR(rows),
                false,
                &dy_sample[d0 * plane..],
                ROW_MAJOR(out_volume),
                rhs,
                rhs_view,
            );
        },
        |_, (_, partial)| dw.iter_mut().zip(partial).for_each(|(a, b)| *a += b),
    );
    dw
}

/// Input gradient: col2im of `Wᵀ [rows, C_out] · dY[n, :, chunk]`.
pub fn im2col_input_grad(weight: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (co, ci, rows) = (g.channels_out, g.channels_in, g.rows());
    let (in_volume, out_volume) = (g.input_volume(), g.output_volume());
    let plane = g.output[1] * g.output[2];
    let mut dx = vec![0.0f32; g.batch * g.input_len()];
    if g.is_pointwise() {
        for n in 0..g.batch {
            matmul(
                [ci, out_volume, co],
                &mut dx[n * g.input_len()..][..g.input_len()],
                ROW_MAJOR(in_volume),
                false,
                weight,
                COL_MAJOR(rows),
                &dy[n * g.output_len()..][..g.output_len()],
                ROW_MAJOR(out_volume),
            );
        }
        return dx;
    }
    let k = g.kernel_volume();
    let mut col = Vec::new();
    for (n, d0, d1) in g.chunks() {
        let cols = (d1 - d0) * plane;
        col.resize(rows * cols, 0.0);
        let dy_sample = &dy[n * g.output_len()..][..g.output_len()];
        matmul(
            [rows, cols, co],
            &mut col,
            ROW_MAJOR(cols),
            false,
            weight,
            COL_MAJOR(rows),
            &dy_sample[d0 * plane..],
            ROW_MAJOR(out_volume),
        );
        let dx_sample = &mut dx[n * g.input_len()..][..g.input_len()];
        dx_sample
            .par_chunks_mut(in_volume)
            .zip(col.par_chunks(k * cols))
            .for_each(|(dx_channel, channel_rows)| {
                for (t, row) in channel_rows.chunks_exact(cols).enumerate() {
                    col2im_row(row, dx_channel, g, g.tap(t), d0);
                }
            });
    }
    dx
}

/// Bias gradient: the sum of `dY` over batch and space, per output channel.
pub fn bias_grad(dy: &[f32], g: &Geometry) -> Vec<f32> {
    channel_sums(dy, g.channels_out, g.output_volume())
}

/// The sum of each channel of `[N, C, V]` values over samples and voxels, in f64: one task
/// per channel, the samples in order, each in 8 interleaved lanes (a serial f64 sum on the
/// calling thread was 2 % of the quickstart's step at 2 threads, all of it on one thread).
pub(crate) fn channel_sums(values: &[f32], channels: usize, volume: usize) -> Vec<f32> {
    let (channels, volume) = (channels.max(1), volume.max(1));
    (0..channels)
        .into_par_iter()
        .map(|c| {
            values
                .chunks(volume)
                .skip(c)
                .step_by(channels)
                .map(|channel| {
                    super::norm::kernels::sums(channel, channel, |v, _| [f64::from(v)])[0]
                })
                .sum::<f64>() as f32
        })
        .collect()
}
