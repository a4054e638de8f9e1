#!/usr/bin/env python3
"""Models Genesis corruption as the original code (and nnssl, which copies it) computes it.

A numpy reimplementation of MrGiovanni/ModelsGenesis `pytorch/utils.py` (flip, local pixel
shuffling, Bezier non-linear map, in-/out-painting) with its Python loops, on a [C, D, H, W]
patch, timed per sample. It is the reference side of `detlab bench genesis`, which runs it.

The local shuffle runs 10,000 iterations as nnssl does on its 160^3 patches ("nnssl"), and the
count scaled to the patch volume, 10,000 * V / 160^3 (detlab's default, "scaled"; the same
number at 160^3).

Usage: genesis_reference.py [--size D,H,W] [--samples N] [--seed S]
Prints one line per case: `case NAME median_ms X mean_ms Y samples N`.
"""

import argparse
import copy
import random
import time

import numpy as np
from math import comb


def bernstein_poly(i, n, t):
    return comb(n, i) * (t ** (n - i)) * (1 - t) ** i


def bezier_curve(points, n_times=1000):
    n_points = len(points)
    x_points = np.array([p[0] for p in points])
    y_points = np.array([p[1] for p in points])
    t = np.linspace(0.0, 1.0, n_times)
    polynomial_array = np.array([bernstein_poly(i, n_points - 1, t) for i in range(0, n_points)])
    return np.dot(x_points, polynomial_array), np.dot(y_points, polynomial_array)


def data_augmentation(x, y, prob=0.5):
    # The original draws the axis among 0-2 of its [C, X, Y, Z] sample, i.e. the channel axis
    # (a no-op for one channel), X and Y, never Z; detlab flips the three spatial axes. The cost
    # of a flip is the same either way.
    cnt = 3
    while random.random() < prob and cnt > 0:
        degree = random.choice([1, 2, 3])
        x = np.flip(x, axis=degree)
        y = np.flip(y, axis=degree)
        cnt = cnt - 1
    return x, y


def nonlinear_transformation(x, prob=0.5):
    if random.random() >= prob:
        return x
    points = [[0, 0], [random.random(), random.random()], [random.random(), random.random()], [1, 1]]
    xvals, yvals = bezier_curve(points, n_times=100000)
    if random.random() < 0.5:
        xvals = np.sort(xvals)
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals)


def local_pixel_shuffling(x, prob=0.5, num_block=10000):
    if random.random() >= prob:
        return x
    image_temp = copy.deepcopy(x)
    orig_image = copy.deepcopy(x)
    _, img_rows, img_cols, img_deps = x.shape
    for _ in range(num_block):
        block_noise_size_x = random.randint(1, img_rows // 10)
        block_noise_size_y = random.randint(1, img_cols // 10)
        block_noise_size_z = random.randint(1, img_deps // 10)
        noise_x = random.randint(0, img_rows - block_noise_size_x)
        noise_y = random.randint(0, img_cols - block_noise_size_y)
        noise_z = random.randint(0, img_deps - block_noise_size_z)
        window = orig_image[0, noise_x:noise_x + block_noise_size_x,
                            noise_y:noise_y + block_noise_size_y,
                            noise_z:noise_z + block_noise_size_z]
        window = window.flatten()
        np.random.shuffle(window)
        window = window.reshape((block_noise_size_x, block_noise_size_y, block_noise_size_z))
        image_temp[0, noise_x:noise_x + block_noise_size_x,
                   noise_y:noise_y + block_noise_size_y,
                   noise_z:noise_z + block_noise_size_z] = window
    return image_temp


def image_in_painting(x):
    _, img_rows, img_cols, img_deps = x.shape
    cnt = 5
    while cnt > 0 and random.random() < 0.95:
        block_noise_size_x = random.randint(img_rows // 6, img_rows // 3)
        block_noise_size_y = random.randint(img_cols // 6, img_cols // 3)
        block_noise_size_z = random.randint(img_deps // 6, img_deps // 3)
        noise_x = random.randint(3, img_rows - block_noise_size_x - 3)
        noise_y = random.randint(3, img_cols - block_noise_size_y - 3)
        noise_z = random.randint(3, img_deps - block_noise_size_z - 3)
        x[:, noise_x:noise_x + block_noise_size_x,
          noise_y:noise_y + block_noise_size_y,
          noise_z:noise_z + block_noise_size_z] = np.random.rand(
            block_noise_size_x, block_noise_size_y, block_noise_size_z) * 1.0
        cnt -= 1
    return x


def image_out_painting(x):
    _, img_rows, img_cols, img_deps = x.shape
    image_temp = copy.deepcopy(x)
    x = np.random.rand(x.shape[0], x.shape[1], x.shape[2], x.shape[3]) * 1.0

    def keep_box():
        bx = img_rows - random.randint(3 * img_rows // 7, 4 * img_rows // 7)
        by = img_cols - random.randint(3 * img_cols // 7, 4 * img_cols // 7)
        bz = img_deps - random.randint(3 * img_deps // 7, 4 * img_deps // 7)
        nx = random.randint(3, img_rows - bx - 3)
        ny = random.randint(3, img_cols - by - 3)
        nz = random.randint(3, img_deps - bz - 3)
        x[:, nx:nx + bx, ny:ny + by, nz:nz + bz] = image_temp[:, nx:nx + bx, ny:ny + by, nz:nz + bz]

    keep_box()
    cnt = 4
    while cnt > 0 and random.random() < 0.95:
        keep_box()
        cnt -= 1
    return x


def corrupt(y, p, num_block):
    """One sample of `generate_pair`: copy, flip, shuffle, non-linear, paint."""
    x = copy.deepcopy(y)
    x, y = data_augmentation(x, y, p["flip"])
    x = local_pixel_shuffling(x, prob=p["local"], num_block=num_block)
    x = nonlinear_transformation(x, p["nonlinear"])
    if random.random() < p["paint"]:
        if random.random() < p["inpaint"]:
            x = image_in_painting(x)
        else:
            x = image_out_painting(x)
    return x, y


REFERENCE = {"flip": 0.4, "local": 0.5, "nonlinear": 0.9, "paint": 0.9, "inpaint": 0.2}
OFF = {"flip": 0.0, "local": 0.0, "nonlinear": 0.0, "paint": 0.0, "inpaint": 0.0}


def patch(size):
    """The smooth test patch in [0, 1] that `detlab bench genesis` builds, too."""
    d, h, w = size
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    v = 0.5 + 0.25 * (np.sin(0.11 * z) * np.cos(0.07 * y) + np.sin(0.05 * x + 0.3 * z))
    return v.astype(np.float32)[None]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="160,160,160")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    random.seed(args.seed)
    np.random.seed(args.seed)
    image = patch(size)
    scaled = max(1, round(10000 * size[0] * size[1] * size[2] / 160 ** 3))
    cases = [
        ("reference-nnssl", REFERENCE, 10000),
        ("reference-scaled", REFERENCE, scaled),
        ("all-nnssl", dict(REFERENCE, local=1.0, nonlinear=1.0, paint=1.0), 10000),
        ("all-scaled", dict(REFERENCE, local=1.0, nonlinear=1.0, paint=1.0), scaled),
        ("local-shuffle-nnssl", dict(OFF, local=1.0), 10000),
        ("local-shuffle-scaled", dict(OFF, local=1.0), scaled),
        ("nonlinear", dict(OFF, nonlinear=1.0), 0),
        ("outpainting", dict(OFF, paint=1.0, inpaint=0.0), 0),
        ("inpainting", dict(OFF, paint=1.0, inpaint=1.0), 0),
    ]
    wanted = [c for c in args.cases.split(",") if c]
    print(f"numpy {np.__version__}; patch {size}; scaled shuffle count {scaled}")
    for name, p, num_block in cases:
        if wanted and name not in wanted:
            continue
        times = []
        for _ in range(args.samples):
            start = time.perf_counter()
            x, y = corrupt(image, p, num_block)
            times.append((time.perf_counter() - start) * 1e3)
        print(f"case {name} median_ms {np.median(times):.2f} mean_ms {np.mean(times):.2f} "
              f"samples {args.samples}", flush=True)


if __name__ == "__main__":
    main()
