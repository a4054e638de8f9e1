#!/usr/bin/env bash
# Prepare nnDetection's own evaluator (its BoxEvaluator, COCOMetric and FROCMetric, unchanged)
# for `detlab bench eval --script benches/nndetection_evaluator.py`, without torch and without
# installing nnDetection: the evaluator's files are taken from a nnDetection git snapshot, and
# the three package `__init__` files that would import torch-based modules are replaced by
# one-line stand-ins that import only what the evaluator uses.
#
#   bash benches/nndetection_evaluator_setup.sh NNDETECTION_GIT_DIR [OUT_DIR]
#
# NNDETECTION_GIT_DIR: a clone of https://github.com/MIC-DKFZ/nnDetection (or its bare .git).
# OUT_DIR (default /tmp/nndet_eval) receives `nndet/` and a venv `venv/` with the pinned
# packages the evaluator imports (numpy < 2, as nnDetection's requirements). Then:
#
#   NNDET_EVAL_ROOT=/tmp/nndet_eval target/release/detlab bench eval \
#       --python /tmp/nndet_eval/venv/bin/python --script benches/nndetection_evaluator.py
set -euo pipefail
src=${1:?usage: nndetection_evaluator_setup.sh NNDETECTION_GIT_DIR [OUT_DIR]}
out=${2:-/tmp/nndet_eval}
rev=${NNDET_REV:-HEAD}
mkdir -p "$out/nndet/core/boxes" "$out/nndet/evaluator/detection" "$out/nndet/utils"
for f in nndet/evaluator/abstract.py nndet/evaluator/det.py \
         nndet/evaluator/detection/__init__.py nndet/evaluator/detection/coco.py \
         nndet/evaluator/detection/froc.py nndet/evaluator/detection/hist.py \
         nndet/evaluator/detection/matching.py nndet/core/boxes/ops_np.py; do
  git --git-dir="$(git -C "$src" rev-parse --absolute-git-dir 2>/dev/null || echo "$src")" \
    show "$rev:$f" > "$out/$f"
done
: > "$out/nndet/__init__.py"
: > "$out/nndet/core/__init__.py"
: > "$out/nndet/utils/__init__.py"
echo "from nndet.core.boxes.ops_np import box_iou_np" > "$out/nndet/core/boxes/__init__.py"
echo "from nndet.evaluator.abstract import AbstractMetric, AbstractEvaluator, DetectionMetric" \
  > "$out/nndet/evaluator/__init__.py"
# froc.py imports only this decorator from nndet.utils.info.
printf 'def experimental(func):\n    return func\n' > "$out/nndet/utils/info.py"
if [ ! -x "$out/venv/bin/python" ]; then
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet numpy==1.26.4 scipy==1.17.1 scikit-learn==1.9.1 \
    matplotlib==3.11.2 loguru==0.7.3
fi
echo "nnDetection evaluator ($rev of $src) ready in $out"
