"""nnDetection's own evaluator on a `detlab eval` input file, for `detlab bench eval --script`.

Runs nnDetection's BoxEvaluator with the metrics `detlab eval` reports by default (AP at IoU
0.1 and 0.5, mAP 0.1:0.5:0.05, FROC at IoU 0.1 and 0.5, per class) and prints one JSON line:
`seconds` (the evaluation, best of --repeat), `read_seconds` (json.load and the numpy arrays),
`total_seconds`, `numpy_version` and every scalar metric under nnDetection's keys.
Prepare it with `benches/nndetection_evaluator_setup.sh`; NNDET_EVAL_ROOT names its folder.

Boxes: `detlab eval` files hold (a0min, a1min, a2min, a0max, a1max, a2max); nnDetection's
box ops take (x1, y1, x2, y2, z1, z2), i.e. (a0min, a1min, a0max, a1max, a2min, a2max).
"""
import json
import os
import sys
import time

sys.path.insert(0, os.environ.get("NNDET_EVAL_ROOT", "/tmp/nndet_eval"))
import numpy as np  # noqa: E402
from loguru import logger  # noqa: E402

logger.remove()
from nndet.evaluator.det import BoxEvaluator  # noqa: E402
from nndet.evaluator.detection.coco import COCOMetric  # noqa: E402
from nndet.evaluator.detection.froc import FROCMetric  # noqa: E402


# Column order from detlab's box layout into nnDetection's.
NNDETECTION_ORDER = [0, 1, 3, 4, 2, 5]


def boxes(values):
    return np.array(values, dtype=np.float64).reshape(-1, 6)[:, NNDETECTION_ORDER]


def main():
    path = sys.argv[1]
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 1
    start = time.perf_counter()
    with open(path) as f:
        data = json.load(f)
    cases = []
    for case in data["cases"]:
        gt, pred = case.get("gt") or {}, case.get("pred") or {}
        cases.append((
            boxes(pred.get("boxes", [])),
            np.array(pred.get("classes", []), dtype=np.int64),
            np.array(pred.get("scores", []), dtype=np.float64),
            boxes(gt.get("boxes", [])),
            np.array(gt.get("classes", []), dtype=np.int64),
        ))
    classes = data.get("classes") or [
        str(i) for i in range(1 + max(int(x) for c in cases for x in list(c[1]) + list(c[4])))
    ]
    read_seconds = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        evaluator = BoxEvaluator(metrics=(
            FROCMetric(classes, iou_thresholds=(0.1, 0.5),
                       fpi_thresholds=(1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8),
                       per_class=True, verbose=False),
            COCOMetric(classes, iou_list=(0.1, 0.5), iou_range=(0.1, 0.5, 0.05),
                       max_detection=(100,), per_class=True, verbose=False),
        ))
        for pb, pc, ps, gb, gc in cases:
            evaluator.run_online_evaluation(pred_boxes=[pb], pred_classes=[pc],
                                            pred_scores=[ps], gt_boxes=[gb], gt_classes=[gc])
        scores, _ = evaluator.finish_online_evaluation()
        best = min(best, time.perf_counter() - t)
    out = {k: float(v) for k, v in scores.items() if np.ndim(v) == 0}
    out.update(seconds=best, read_seconds=read_seconds, total_seconds=read_seconds + best,
               numpy_version=np.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
