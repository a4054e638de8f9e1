#!/usr/bin/env python3
"""A numpy REIMPLEMENTATION of nnDetection's box-evaluation semantics (baseline for
`detlab bench eval`). This is not nnDetection's code: it was written from the written
specification of the metrics (docs: nnDetection's evaluator semantics, §4 of the reference
notes) so that `detlab eval` can be timed against a Python evaluator doing the same work the
same way (per-image Python loops for greedy matching, numpy for IoU matrices, cumulative sums
and interpolation).

Semantics reproduced:
  * per image and class: stable descending-score order, first `max_det` predictions kept;
    greedy matching at every IoU threshold t: a prediction takes the unmatched GT with the
    highest IoU >= min(t, 1 - 1e-10), the later GT winning ties;
  * AP: per class, detections of all images concatenated in image order and stable-sorted
    by score; cumulative TP/FP cast to float32; recall = TP / G and precision =
    TP / (TP + FP + eps) in float32 (numpy < 2 value-based casting); precision envelope;
    101-point recall grid (np.linspace(0, 1, 101)) searched with side="left"; a class without
    GT has AP -1 and is averaged in;
  * FROC: all classes pooled after per-class matching (and per class, with mc_ = sum over
    classes with GT / number of classes); ROC points at each distinct score
    (ties grouped); FPPI = FP count / number of images, sensitivity = TP count / G; numpy
    `interp` at the FPPI grid; NaN when there are detections but no TP.

Usage: eval_numpy_reimplementation.py INPUT.json [--repeat N]
INPUT.json is `detlab eval`'s input format. Prints one JSON object: the metric values and
`seconds` (the best evaluation time over the repeats, file reading excluded).
"""

import json
import sys
import time

import numpy as np


def iou_matrix(a, b):
    """Pairwise 3D IoU of boxes [d0, h0, w0, d1, h1, w1], float64, no epsilon."""
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    va = np.prod(a[:, 3:] - a[:, :3], axis=1)
    vb = np.prod(b[:, 3:] - b[:, :3], axis=1)
    return inter / (va[:, None] + vb[None, :] - inter)


def iou_thresholds(iou_list, iou_range):
    start, stop, step = iou_range
    num = int(np.round((stop - start) / step)) + 1
    rng = np.linspace(start, stop, num, endpoint=True)
    return np.union1d(np.array(iou_list, dtype=np.float64), rng), rng


def match_image(gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes, thresholds, max_det):
    """Per-class matching for one image: {class: (scores [D], matched [T, D] bool, n_gt)}."""
    out = {}
    for c in np.union1d(gt_classes, pred_classes):
        pmask = pred_classes == c
        gmask = gt_classes == c
        order = np.argsort(-pred_scores[pmask], kind="mergesort")[:max_det]
        scores = pred_scores[pmask][order]
        boxes = pred_boxes[pmask][order]
        gboxes = gt_boxes[gmask]
        matched = np.zeros((len(thresholds), len(scores)), dtype=bool)
        if len(gboxes) and len(boxes):
            ious = iou_matrix(boxes, gboxes).tolist()
            for ti, t in enumerate(thresholds.tolist()):
                gt_taken = [False] * len(gboxes)
                for di in range(len(boxes)):
                    best = min(t, 1 - 1e-10)
                    m = -1
                    row = ious[di]
                    for gi in range(len(gboxes)):
                        if gt_taken[gi]:
                            continue
                        if row[gi] < best:
                            continue
                        best = row[gi]
                        m = gi
                    if m >= 0:
                        gt_taken[m] = True
                        matched[ti, di] = True
        out[int(c)] = (scores, matched, int(gmask.sum()))
    return out


def average_precision(scores, matched, n_gt, recall_grid):
    """AP per threshold row of `matched` (already in the final stable score order)."""
    tp = np.cumsum(matched, axis=1).astype(np.float32)
    fp = np.cumsum(~matched, axis=1).astype(np.float32)
    aps = []
    for tpr, fpr in zip(tp, fp):
        rc = tpr / n_gt
        pr = tpr / (fpr + tpr + np.spacing(1))
        if pr.dtype != np.float32:  # numpy >= 2 promotes to float64; keep numpy 1 semantics
            pr = (tpr / (fpr + tpr + np.float32(np.spacing(1)))).astype(np.float32)
        env = np.maximum.accumulate(pr[::-1].astype(np.float64))[::-1]
        idx = np.searchsorted(rc.astype(np.float64), recall_grid, side="left")
        prec = np.zeros(len(recall_grid))
        ok = idx < len(env)
        prec[ok] = env[idx[ok]]
        aps.append(prec)
    return np.array(aps)  # [T, 101]


def froc(scores, matched_row, n_gt, n_images, fppi_grid):
    if n_gt == 0:
        return 0.0, np.zeros(len(fppi_grid))
    if len(scores) == 0:
        return 0.0, np.zeros(len(fppi_grid))
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = matched_row[order].astype(np.int64)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    if tps[-1] == 0:
        return float("nan"), np.full(len(fppi_grid), np.nan)
    x = np.r_[0.0, fps / n_images]
    yv = np.r_[0.0, tps / n_gt]
    curve = np.interp(fppi_grid, x, yv)
    return float(np.mean(curve)), curve


def evaluate(data, iou_list=(0.1, 0.5), iou_range=(0.1, 0.5, 0.05), max_det=100, fppi=(0.125, 0.25, 0.5, 1, 2, 4, 8), froc_iou=(0.1, 0.5)):
    thresholds, rng = iou_thresholds(tuple(iou_list) + tuple(froc_iou), iou_range)
    recall_grid = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1, endpoint=True)
    cases = data["cases"]
    n_classes = len(data["classes"]) if data.get("classes") else 1 + max(
        [max(c["gt"]["classes"] + c["pred"]["classes"], default=-1) for c in cases], default=-1)
    per_image = []
    for case in cases:
        g, p = case["gt"], case["pred"]
        per_image.append(match_image(
            np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 6), np.asarray(g["classes"], dtype=np.int64),
            np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 6), np.asarray(p["scores"], dtype=np.float64),
            np.asarray(p["classes"], dtype=np.int64), thresholds, max_det))
    precision = -np.ones((len(thresholds), len(recall_grid), n_classes))
    for c in range(n_classes):
        entries = [r[c] for r in per_image if c in r]
        n_gt = sum(e[2] for e in entries)
        if not entries or n_gt == 0:
            continue
        scores = np.concatenate([e[0] for e in entries])
        matched = np.concatenate([e[1] for e in entries], axis=1)
        order = np.argsort(-scores, kind="mergesort")
        precision[:, :, c] = average_precision(scores[order], matched[:, order], n_gt, recall_grid)
    out = {}
    tidx = {float(t): i for i, t in enumerate(thresholds)}
    range_idx = [tidx[float(t)] for t in rng]
    out[f"mAP_IoU_{iou_range[0]:.2f}_{iou_range[1]:.2f}_{iou_range[2]:.2f}_MaxDet_{max_det}"] = float(np.mean(precision[range_idx]))
    for c in range(n_classes):
        out[f"{c}_mAP_IoU_{iou_range[0]:.2f}_{iou_range[1]:.2f}_{iou_range[2]:.2f}_MaxDet_{max_det}"] = float(np.mean(precision[range_idx][:, :, c]))
    for t in iou_list:
        out[f"AP_IoU_{t:.2f}_MaxDet_{max_det}"] = float(np.mean(precision[tidx[float(t)]]))
        for c in range(n_classes):
            out[f"{c}_AP_IoU_{t:.2f}_MaxDet_{max_det}"] = float(np.mean(precision[tidx[float(t)], :, c]))
    entries = [e for r in per_image for e in r.values()]
    n_gt = sum(e[2] for e in entries)
    scores = np.concatenate([e[0] for e in entries]) if entries else np.zeros(0)
    for t in froc_iou:
        row = np.concatenate([e[1][tidx[float(t)]] for e in entries]) if entries else np.zeros(0, dtype=bool)
        score, curve = froc(scores, row, n_gt, len(cases), np.asarray(fppi, dtype=np.float64))
        out[f"FROC_score_IoU_{t:.2f}"] = score
        out[f"FROC_curve_IoU_{t:.2f}"] = curve.tolist()
    # Per-class FROC: the same computation on one class, N_img still all images.
    for t in froc_iou:
        total = 0.0
        for c in range(n_classes):
            entries = [r[c] for r in per_image if c in r]
            n_gt = sum(e[2] for e in entries)
            scores = np.concatenate([e[0] for e in entries]) if entries else np.zeros(0)
            row = np.concatenate([e[1][tidx[float(t)]] for e in entries]) if entries else np.zeros(0, dtype=bool)
            score, curve = froc(scores, row, n_gt, len(cases), np.asarray(fppi, dtype=np.float64))
            out[f"{c}_FROC_score_IoU_{t:.2f}"] = score
            out[f"{c}_FROC_curve_IoU_{t:.2f}"] = curve.tolist()
            if n_gt > 0:
                total += score
        out[f"mc_FROC_score_IoU_{t:.2f}"] = total / n_classes if n_classes else 0.0
    return out


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    repeat = 1
    if "--repeat" in args:
        repeat = int(args[args.index("--repeat") + 1])
    with open(args[0]) as f:
        data = json.load(f)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = evaluate(data)
        best = min(best, time.perf_counter() - t0)
    result["seconds"] = best
    result["numpy_version"] = np.__version__
    print(json.dumps(result, allow_nan=True))


if __name__ == "__main__":
    main()
