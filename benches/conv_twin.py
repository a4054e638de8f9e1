"""PyTorch's CPU conv3d on the shapes of `detlab bench conv --set NAME`: forward, input
gradient and weight gradient, best of N, in ms and GFLOP/s (the same FLOP count as detlab's).

Usage: python benches/conv_twin.py [--threads N] [--repeat N] [--set default|resenc_l]
Run from the repository root after `cargo build --release`; DETLAB overrides the binary
(default ./target/release/detlab), which lists the shapes.
"""
import argparse
import json
import os
import subprocess
import time

import torch
import torch.nn.functional as F


def shapes(detlab, name):
    """The convolutions of `detlab bench conv --set NAME`: (x shape, C_out, kernel, stride,
    padding) each, as detlab lists them."""
    out = subprocess.run(
        [detlab, "bench", "conv", "--set", name, "--print-shapes"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


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
    parser.add_argument("--set", choices=["default", "resenc_l"], default="default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__} conv3d, {args.threads} thread(s), best of {args.repeat}; GFLOP/s")
    print(f"{'convolution':<44} {'fwd ms':>9} {'dX ms':>9} {'dW ms':>9} {'fwd GF/s':>8} {'dX GF/s':>8} {'dW GF/s':>8}")
    detlab = os.environ.get("DETLAB", "./target/release/detlab")
    for x_shape, c_out, k, stride, padding in shapes(detlab, args.set):
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
