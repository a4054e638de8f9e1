#!/usr/bin/env python3
"""PyTorch twin of `detlab bench infer-memory`: sliding-window inference of a random N^3 volume
with the tiny Retina U-Net (detlab's `RetinaUNetConfig::tiny`: retunet widths [8, 16, 32, 64],
U-FPN/heads 16 channels, GroupNorm(2); random weights), under `torch.no_grad`.

The same tiles as detlab (nnDetection's symmetric grid, 50 % overlap, border tiles shifted
inside, duplicates dropped), one tile per forward (tile batch 1), no TTA. Per tile, as detlab:
forward, sigmoid of the class logits, the top 10,000 candidates, box decoding and NMS (IoU 0.6,
100 boxes). Prints tiles, seconds, tiles/s and the peak RSS.

Usage: python3 benches/infer_twin.py [--size N] [--patch P] [--threads N]
"""

import argparse
import resource
import time

import torch

from torch_twin import RetinaUNet, decode, make_anchors


def axis_starts(length, patch, overlap):
    """detlab's `infer::tiling::axis_starts`."""
    if patch >= length:
        return [(-(patch - length)) // 2]
    step = max(patch - overlap, 1)
    lower = ((length % step) - patch) // 2
    starts, upper = [], None
    while upper is None or upper < length:
        if starts:
            lower -= overlap
        upper = lower + patch
        s = min(max(lower, 0), length - patch)
        if not starts or starts[-1] != s:
            starts.append(s)
        lower = upper
    return starts


def nms(boxes, scores, iou, keep_max):
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    keep = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    vol = (boxes[:, 3:] - boxes[:, :3]).clamp(min=0).prod(-1)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        if len(keep) == keep_max:
            break
        lo = torch.max(boxes[i, :3], boxes[i + 1:, :3])
        hi = torch.min(boxes[i, 3:], boxes[i + 1:, 3:])
        inter = (hi - lo).clamp(min=0).prod(-1)
        suppressed[i + 1:] |= inter / (vol[i] + vol[i + 1:] - inter) > iou
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = RetinaUNet("tiny").eval()
    n, p = args.size, args.patch
    volume = torch.rand(1, 1, n, n, n)
    starts = axis_starts(n, p, p // 2)
    tiles = [(d, h, w) for d in starts for h in starts for w in starts]
    boxes_found = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        anchors = None
        for d, h, w in tiles:
            x = volume[:, :, d:d + p, h:h + p, w:w + p].contiguous()
            logits, deltas, _, grids = model(x)
            if anchors is None:
                anchors = torch.cat(make_anchors(p, grids))
            scores = torch.sigmoid(logits[0, :, 0])
            k = min(10_000, scores.numel())
            top, idx = scores.topk(k)
            boxes = decode(deltas[0, idx], anchors[idx])
            boxes_found += len(nms(boxes, top, 0.6, 100))
    seconds = time.perf_counter() - t0
    print(f"PyTorch {torch.__version__} tiny Retina U-Net (random weights), {n}^3 volume, patch {p}^3, "
          f"{torch.get_num_threads()} thread(s), torch.no_grad")
    print(f"tiles {len(tiles)}  time {seconds:.1f} s  tiles/s {len(tiles) / seconds:.3f}  "
          f"boxes {boxes_found}  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
