#!/usr/bin/env bash
# Real NIfTI files and the pinned Python checker used by tests/volume_real_data.rs:
#   - Debian mricron-data and insighttoolkit5-examples (files under /usr/share);
#   - a virtual environment <repo>/.venv with nibabel, dipy, scipy, numpy and scikit-image, every package
#     pinned, so that a new numpy or scipy release cannot change what the tests see.
# The tests run this script themselves (tests/common/mod.rs, `setup_data`), so `cargo test`
# alone works on a fresh machine; CI (.ci/run) runs it first to fail early with its output.
# Idempotent: when everything is in place it installs nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/.venv"
# The whole dependency closure of nibabel==5.4.2, dipy==1.12.1, scipy 1.17 and scikit-image
# 0.26 (the cubic resampling check in tests/volume_real_data.rs) on CPython 3.11
# (pip's resolution, then frozen), installed with --no-deps so that nothing unpinned slips in.
# Changing a line here rebuilds the venv from scratch on the next run.
pins="nibabel==5.4.2
dipy==1.12.1
scipy==1.17.1
numpy==2.4.6
h5py==3.16.0
importlib_resources==7.1.0
packaging==26.4
tqdm==4.70.1
trx-python==0.6
typer==0.29.2
annotated-doc==0.0.7
pydantic==2.14.4
pydantic_core==2.50.5
annotated-types==0.8.0
rich==15.0.0
Pygments==2.21.0
markdown-it-py==4.3.0
mdurl==0.1.2
shellingham==1.5.4
typing_extensions==4.16.0
typing-inspection==0.4.5
deepdiff==9.1.0
cachebox==5.2.3
orderly-set==5.5.0
scikit-image==0.26.0
ImageIO==2.38.2
lazy-loader==0.6
networkx==3.6.1
pillow==13.0.0
tifffile==2026.3.3"
# The stamp is written only after a complete install that passed `pip check`.
stamp="$venv/detlab-pins.txt"

need_apt=()
[ -f /usr/share/mricron/templates/ch2.nii.gz ] || need_apt+=(mricron-data)
[ -f /usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz ] || need_apt+=(insighttoolkit5-examples)
# Debian's own python3 ships venv/ensurepip separately.
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        # -n: fail instead of waiting for a password when run from the tests (no terminal).
        if [ -t 0 ]; then sudo=(sudo); else sudo=(sudo -n); fi
    fi
    echo "setup-data: apt-get install ${need_apt[*]}" >&2
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] \
    && "$venv/bin/python" -c '' 2>/dev/null; then
    exit 0
fi

echo "setup-data: creating $venv with the pinned packages" >&2
# --clear: a venv with other (older) pins is rebuilt, not patched.
python3 -m venv --clear "$venv"
mapfile -t pin_list <<<"$pins"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps \
    --only-binary=:all: "${pin_list[@]}"
"$venv/bin/python" -m pip check --disable-pip-version-check
"$venv/bin/python" -c 'import nibabel, dipy, scipy, numpy, skimage'
printf '%s' "$pins" >"$stamp"
