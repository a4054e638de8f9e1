"""Reference for `detlab bench preprocess`: the same pipeline with nibabel + scipy + numpy.

    python3 benches/preprocess_reference.py FILE.nii.gz [--repeat R]

Steps (each timed, best of R): load (nibabel, float32, C-order [k, j, i] view as detlab's
[D, H, W]); resample to 1 mm with scipy.ndimage.zoom(order=1, grid_mode=True, mode='nearest')
to round(n * spacing / 1.0) voxels per axis (nnU-Net's rule); CT-normalise with the case's body
voxels (> -500 HU, every 10th) as foreground: mean, std, 0.5/99.5th percentiles, clip, z-score.
Prints one JSON line: seconds per step, peak RSS (ru_maxrss) and a checksum of the output.
"""
import argparse
import json
import resource
import time

import nibabel as nib
import numpy as np
from scipy import ndimage


def pipeline(path):
    t0 = time.perf_counter()
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32).T  # (i, j, k) Fortran order -> C-order [k, j, i]
    spacing = np.array(img.header.get_zooms()[:3], dtype=np.float64)[::-1]
    t1 = time.perf_counter()
    new_shape = np.round(spacing / 1.0 * np.array(data.shape)).astype(int)
    out = ndimage.zoom(data, new_shape / np.array(data.shape), order=1, grid_mode=True, mode="nearest")
    assert out.shape == tuple(new_shape), (out.shape, new_shape)
    del data
    t2 = time.perf_counter()
    samples = out[out > -500][::10]
    mean = samples.astype(np.float64).mean()
    std = samples.astype(np.float64).std()
    lo, hi = np.percentile(samples, [0.5, 99.5])
    np.clip(out, lo, hi, out=out)
    out -= mean
    out /= std
    t3 = time.perf_counter()
    return out, (t1 - t0, t2 - t1, t3 - t2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    best = [float("inf")] * 3
    out = None
    for _ in range(max(1, args.repeat)):
        out = None
        out, times = pipeline(args.path)
        best = [min(b, t) for b, t in zip(best, times)]
    o64 = out.astype(np.float64)
    print(json.dumps({
        "implementation": "python (nibabel + scipy.ndimage.zoom + numpy)",
        "output_shape": list(out.shape),
        "seconds": {"load": best[0], "resample": best[1], "normalize": best[2], "total": sum(best)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "checksum": {"mean": float(o64.mean()), "std": float(o64.std())},
    }))


if __name__ == "__main__":
    main()
