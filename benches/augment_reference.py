#!/usr/bin/env python3
"""nnDetection's BaseMoreAug training transforms (batchgenerators), timed on a batch.

The reference side of `detlab bench augment`, which runs it. The transform list and its
parameters are those of nnDetection's `BaseMoreAug.get_training_transforms` with
`base_more.yaml` (angles converted to radians as nnDetection's data module does): the spatial
transform on the generator patch (rotation p 0.2, scaling p 0.2, data order 3, seg order 0,
constant borders, centre crop), Gaussian noise, Gaussian blur, multiplicative brightness,
contrast, inverted gamma, gamma, mirroring, and the `-1 -> 0` label fix. The boxes are then
taken from the instance mask (per instance, the bounds of its voxels), as nnDetection does after
augmentation.

Every batch starts from copies of the same generator patches (one channel, float32; the
instance mask as float32 like nnDetection's loader), so the copies are not timed.

Cases: `base_more` (nnDetection's probabilities), `all` (every transform applied, mirroring on
every axis), `spatial` (rotation and scaling always, nothing else), `intensity` (every intensity
transform always, on final-size patches). Run it with one thread (OMP_NUM_THREADS=1 etc.).

Usage: augment_reference.py [--patch N] [--generator N] [--batch B] [--batches N] [--seed S]
Prints one line per case: `case NAME mean_ms X median_ms Y cpu_ms Z batches N` (wall times, and
the mean process CPU time per batch).
"""

import argparse
import time

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import (
    GaussianBlurTransform,
    GaussianNoiseTransform,
)
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform


def test_patch(size, index):
    """The generator patch `index` of `detlab bench augment`: a smooth image with spheres of
    value 1 whose mask holds instance ids 1, 2, 3."""
    d, h, w = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size), indexing="ij")
    phase = 0.37 * index
    image = 0.5 + 0.25 * (np.sin(0.11 * d + phase) * np.cos(0.07 * h) + np.sin(0.05 * w + 0.3 * d))
    mask = np.zeros(size, dtype=np.float32)
    for k in range(3):
        centre = [(0.3 + 0.2 * k + 0.05 * index) * n for n in size]
        radius = 0.06 * min(size) * (1 + k * 0.5)
        inside = (d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2 <= radius**2
        mask[inside] = k + 1
        image[inside] = 1.0
    return image.astype(np.float32), mask


def spatial(patch, p_rot, p_scale):
    angle = 30 / 180 * np.pi
    return SpatialTransform(
        patch,
        patch_center_dist_from_border=None,
        do_elastic_deform=False,
        alpha=(0.0, 900.0),
        sigma=(9.0, 13.0),
        do_rotation=True,
        angle_x=(-angle, angle),
        angle_y=(-angle, angle),
        angle_z=(-angle, angle),
        do_scale=True,
        scale=(0.7, 1.4),
        order_data=3,
        border_mode_data="constant",
        order_seg=0,
        border_mode_seg="constant",
        random_crop=False,
        p_el_per_sample=0.2,
        p_scale_per_sample=p_scale,
        p_rot_per_sample=p_rot,
        independent_scale_for_each_axis=False,
    )


def intensity(p):
    """nnDetection's intensity transforms with the probabilities `p` (a dict)."""
    return [
        GaussianNoiseTransform(p_per_sample=p["noise"]),
        GaussianBlurTransform(
            (0.5, 1.0),
            different_sigma_per_channel=True,
            p_per_sample=p["blur"],
            p_per_channel=p["blur_channel"],
        ),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=p["brightness"]),
        ContrastAugmentationTransform(p_per_sample=p["contrast"]),
        GammaTransform((0.7, 1.5), True, True, retain_stats=True, p_per_sample=p["inverted_gamma"]),
        GammaTransform((0.7, 1.5), False, True, retain_stats=True, p_per_sample=p["gamma"]),
    ]


class AlwaysMirror:
    """Mirroring on every axis (the `all` case; MirrorTransform flips each axis with p 0.5)."""

    def __call__(self, **data_dict):
        data_dict["data"] = np.ascontiguousarray(data_dict["data"][:, :, ::-1, ::-1, ::-1])
        data_dict["seg"] = np.ascontiguousarray(data_dict["seg"][:, :, ::-1, ::-1, ::-1])
        return data_dict


def boxes_from_mask(seg):
    """Per sample, the instance ids and their (min - 1, max + 1) boxes."""
    out = []
    for sample in seg[:, 0]:
        boxes = {}
        for i in np.unique(sample):
            if i <= 0:
                continue
            where = np.argwhere(sample == i)
            lo, hi = where.min(0), where.max(0)
            boxes[int(i)] = (lo - 1, hi + 1)
        out.append(boxes)
    return out


def pipelines(patch):
    base = dict(noise=0.1, blur=0.2, blur_channel=0.5, brightness=0.15, contrast=0.15,
                inverted_gamma=0.1, gamma=0.3)
    always = {k: 1.0 for k in base}
    return {
        "base_more": Compose([spatial(patch, 0.2, 0.2), *intensity(base), MirrorTransform((0, 1, 2)),
                              RemoveLabelTransform(-1, 0)]),
        "all": Compose([spatial(patch, 1.0, 1.0), *intensity(always), AlwaysMirror(),
                        RemoveLabelTransform(-1, 0)]),
        "spatial": Compose([spatial(patch, 1.0, 1.0), RemoveLabelTransform(-1, 0)]),
        "intensity": Compose(intensity(always)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--generator", type=int, default=249)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--cases", default="base_more,all,spatial,intensity")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    np.random.seed(args.seed)
    import random

    random.seed(args.seed)
    patch = (args.patch,) * 3
    big = [test_patch((args.generator,) * 3, i) for i in range(args.batch)]
    small = [test_patch(patch, i) for i in range(args.batch)]
    for name, transform in pipelines(patch).items():
        if name not in args.cases.split(","):
            continue
        source = small if name == "intensity" else big
        data = np.stack([p[0][None] for p in source])
        seg = np.stack([p[1][None] for p in source])
        times = []
        cpu_times = []
        for _ in range(args.batches):
            batch = {"data": data.copy(), "seg": seg.copy()}
            start, cpu_start = time.perf_counter(), time.process_time()
            out = transform(**batch)
            if name != "intensity":
                boxes_from_mask(out["seg"])
            times.append((time.perf_counter() - start) * 1e3)
            cpu_times.append((time.process_time() - cpu_start) * 1e3)
        print(f"case {name} mean_ms {np.mean(times):.2f} median_ms {np.median(times):.2f} "
              f"cpu_ms {np.mean(cpu_times):.2f} batches {len(times)}", flush=True)


if __name__ == "__main__":
    main()
