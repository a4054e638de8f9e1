"""PyTorch's CPU conv3d on the shapes of `detlab bench conv --set NAME`: forward, input
gradient and weight gradient, best of N, in ms and GFLOP/s (the same FLOP count as detlab's).

Usage: python benches/conv_twin.py [--threads N] [--repeat N] [--set default|resenc_l]
"""
import argparse
import time

import torch
import torch.nn.functional as F

# (x shape, C_out, kernel, stride, padding), as in src/cli/bench/conv.rs.
SETS = {
    "default": [
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
        ([2, 32, 64, 64, 64], 32, 3, 1, 1),
        ([2, 64, 32, 32, 32], 64, 3, 1, 1),
        ([2, 64, 32, 32, 32], 162, 3, 1, 1),
    ],
    "resenc_l": [
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
    ],
}


def best_ms(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--set", choices=sorted(SETS), default="default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__} conv3d, {args.threads} thread(s), best of {args.repeat}; GFLOP/s")
    print(f"{'convolution':<44} {'fwd ms':>9} {'dX ms':>9} {'dW ms':>9} {'fwd GF/s':>8} {'dX GF/s':>8} {'dW GF/s':>8}")
    for x_shape, c_out, k, stride, padding in SETS[args.set]:
        x = torch.rand(x_shape, requires_grad=True)
        w = torch.rand([c_out, x_shape[1], k, k, k], requires_grad=True)
        y = F.conv3d(x, w, None, stride, padding)
        dy = torch.rand_like(y)

        def forward():
            with torch.no_grad():
                F.conv3d(x, w, None, stride, padding)

        def grad(wrt):
            def run():
                out = F.conv3d(x, w, None, stride, padding)
                torch.autograd.grad(out, wrt, dy)
            return run

        fwd = best_ms(forward, args.repeat)
        # Forward + one gradient, less the forward: the gradient alone.
        dx = max(best_ms(grad(x), args.repeat) - fwd, 1e-6)
        dw = max(best_ms(grad(w), args.repeat) - fwd, 1e-6)
        out = y[0, 0].numel()
        gflop = 2.0 * x_shape[0] * c_out * out * x_shape[1] * k**3 / 1e9
        name = f"{x_shape} * {c_out}x{k}³ /{stride}"
        print(f"{name:<44} {fwd:>9.2f} {dx:>9.2f} {dw:>9.2f} {gflop / fwd * 1e3:>8.1f} {gflop / dx * 1e3:>8.1f} {gflop / dw * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
