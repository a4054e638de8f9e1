//! `detlab bench conv [--threads N] [--repeat N] [--set default|resenc_l]`: every CPU conv3d
//! kernel (the direct AVX-512 / AVX2 kernels and im2col + gemm) on the convolutions of the
//! quickstart's Retina U-Net step and the largest of the default bench network's (`default`),
//! or on those of a ResEnc-L MAE step at 2 × 64³ (`resenc_l`), forward, input gradient and
//! weight gradient, in GFLOP/s; this is the table that decides which kernel each layer shape
//! uses. `--print-shapes` prints the set as JSON (`[x, C_out, k, stride, padding]` per
//! convolution) instead: `benches/conv_twin.py --set NAME` reads it from there and times
//! PyTorch's conv3d on the same shapes.

/// `(x [N, C_in, D, H, W], kernel [C_out, C_in, k, k, k] as (C_out, k), stride, padding)`.
const SHAPES: &[([usize; 5], usize, usize, usize, usize)] = &[
    ([4, 8, 32, 32, 32], 8, 3, 1, 1),
    ([4, 16, 32, 32, 32], 16, 3, 1, 1),
    ([4, 16, 16, 16, 16], 16, 3, 1, 1),
    ([4, 32, 16, 16, 16], 32, 3, 1, 1),
    ([4, 32, 16, 16, 16], 162, 3, 1, 1),
    ([4, 32, 8, 8, 8], 32, 3, 1, 1),
    ([4, 32, 8, 8, 8], 162, 3, 1, 1),
    ([4, 32, 4, 4, 4], 32, 3, 1, 1),
    ([4, 64, 4, 4, 4], 64, 3, 1, 1),
    ([4, 8, 32, 32, 32], 16, 1, 1, 0),
    ([4, 16, 16, 16, 16], 32, 1, 1, 0),
    ([4, 16, 32, 32, 32], 2, 1, 1, 0),
    ([4, 8, 32, 32, 32], 16, 3, 2, 1),
    // The default `detlab bench train-step` network (2 × 1 × 64³, widths 16-128).
    ([2, 32, 64, 64, 64], 32, 3, 1, 1),
    ([2, 64, 32, 32, 32], 64, 3, 1, 1),
    ([2, 64, 32, 32, 32], 162, 3, 1, 1),
];

/// The convolutions of a ResEnc-L MAE pre-training step at 2 × 64³ (widths 32–320): each
/// stage's block convolution and stride-2 entry, and the decoder's convolution after its
/// concatenation.
const RESENC_L_SHAPES: &[([usize; 5], usize, usize, usize, usize)] = &[
    ([2, 32, 64, 64, 64], 32, 3, 1, 1),
    ([2, 64, 64, 64, 64], 32, 3, 1, 1),
    ([2, 32, 64, 64, 64], 64, 3, 2, 1),
    ([2, 64, 32, 32, 32], 64, 3, 1, 1),
    ([2, 128, 32, 32, 32], 64, 3, 1, 1),
    ([2, 64, 32, 32, 32], 128, 3, 2, 1),
    ([2, 128, 16, 16, 16], 128, 3, 1, 1),
    ([2, 256, 16, 16, 16], 128, 3, 1, 1),
    ([2, 128, 16, 16, 16], 256, 3, 2, 1),
    ([2, 256, 8, 8, 8], 256, 3, 1, 1),
    ([2, 256, 8, 8, 8], 320, 3, 2, 1),
    ([2, 320, 4, 4, 4], 320, 3, 1, 1),
];

pub fn run(args: &[String]) -> i32 {
    let mut threads = 1;
    let mut repeats = 5;
    let mut shapes = SHAPES;
    let mut print_shapes = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--print-shapes" {
            print_shapes = true;
            continue;
        }
        let text = it.next().map(String::as_str);
        let value = text.and_then(|v| v.parse::<usize>().ok());
        match (arg.as_str(), value, text) {
            ("--threads", Some(v), _) if v > 0 => threads = v,
            ("--repeat", Some(v), _) if v > 0 => repeats = v,
            ("--set", _, Some("default")) => shapes = SHAPES,
            ("--set", _, Some("resenc_l")) => shapes = RESENC_L_SHAPES,
            _ => {
                eprintln!(
                    "detlab bench conv: unknown or invalid argument '{arg}' (--threads N, --repeat N, --set default|resenc_l, --print-shapes)"
                );
                return 2;
            }
        }
    }
    if print_shapes {
        let list: Vec<_> = shapes
            .iter()
            .map(|&(x, c_out, k, stride, padding)| {
                serde_json::json!([x, c_out, k, stride, padding])
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return 0;
    }
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("detlab bench conv: {e}");
            return 1;
        }
    };
    println!(
        "conv3d kernels, {threads} thread(s), best of {repeats}; GFLOP/s (forward: 2·N·C_out·voxels·C_in·k³ FLOPs; each gradient the same)"
    );
    println!(
        "{:<44} {:<18} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "convolution", "kernel", "fwd ms", "dX ms", "dW ms", "fwd GF/s", "dX GF/s", "dW GF/s"
    );
    pool.install(|| {
        for &(x, c_out, k, stride, padding) in shapes {
            let weight = [c_out, x[1], k, k, k];
            let Some(timings) =
                detlab::nn::conv::kernel_timings(x, weight, [stride; 3], [padding; 3], repeats)
            else {
                continue;
            };
            let [_, _, d, h, w] = x;
            let out: usize = [d, h, w]
                .iter()
                .map(|s| (s + 2 * padding - k) / stride + 1)
                .product();
            let gflop = 2.0 * (x[0] * c_out * out * x[1] * k * k * k) as f64 / 1e9;
            let name = format!("{:?} * {c_out}x{k}³ /{stride}", x);
            for t in timings {
                println!(
                    "{name:<44} {:<18} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>8.1} {:>8.1}",
                    t.kernel,
                    t.forward_ms,
                    t.input_grad_ms,
                    t.weight_grad_ms,
                    gflop / t.forward_ms * 1e3,
                    gflop / t.input_grad_ms * 1e3,
                    gflop / t.weight_grad_ms * 1e3,
                );
            }
        }
    });
    0
}
