"""Reference for `detlab bench resample`: skimage's resize as nnDetection resamples images.

    python3 benches/resample_reference.py INPUT.f32 --shape D,H,W --out-shape D,H,W \
        [--detlab DETLAB.f32] [--repeat R]

INPUT.f32 is a little-endian float32 C-order array of --shape (detlab writes it). The timed call
is nnU-Net v1's `resample_data_or_seg` for one image channel (what nnDetection runs): the
channel as float64, `skimage.transform.resize(x, out_shape, order=3, mode="edge", cval=0,
clip=True, anti_aliasing=False)`, then float32. With --detlab, the maximum absolute difference
to detlab's output (same layout, --out-shape) is reported too. Prints one JSON line with the
best wall seconds and the best process CPU seconds (`time.process_time`) over the repeats.
Needs scikit-image (benches use a scratch venv, e.g. /tmp/skvenv).
"""
import argparse
import json
import time

import numpy as np
import skimage
from skimage.transform import resize


def shape_of(text):
    return tuple(int(v) for v in text.split(","))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--shape", type=shape_of, required=True)
    parser.add_argument("--out-shape", type=shape_of, required=True)
    parser.add_argument("--detlab")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    data = np.fromfile(args.input, dtype="<f4").reshape(args.shape)
    best = best_cpu = float("inf")
    out = None
    for _ in range(max(1, args.repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = resize(
            data.astype(float), args.out_shape, order=3, mode="edge", cval=0, clip=True,
            anti_aliasing=False,
        ).astype(np.float32)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    result = {
        "skimage": skimage.__version__,
        "numpy": np.__version__,
        "seconds": best,
        "cpu_seconds": best_cpu,
        "out_shape": list(out.shape),
        "checksum": float(out.astype(np.float64).sum()),
    }
    if args.detlab:
        theirs = np.fromfile(args.detlab, dtype="<f4").reshape(args.out_shape)
        diff = np.abs(theirs.astype(np.float64) - out.astype(np.float64))
        result["max_abs_diff"] = float(diff.max())
        result["mean_abs_diff"] = float(diff.mean())
        result["data_range"] = float(data.max() - data.min())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
