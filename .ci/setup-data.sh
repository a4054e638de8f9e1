#!/usr/bin/env bash
# Real NIfTI files and checkers used by tests/volume_real_data.rs (see
# docs in that file). Idempotent: installs only what is missing.
set -euo pipefail

need_apt=()
[ -f /usr/share/mricron/templates/ch2.nii.gz ] || need_apt+=(mricron-data)
[ -f /usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz ] || need_apt+=(insighttoolkit5-examples)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${need_apt[@]}"
fi

if ! python3 -c 'import nibabel, dipy, scipy, sys; sys.exit(0 if (nibabel.__version__, dipy.__version__) == ("5.4.2", "1.12.1") else 1)' 2>/dev/null; then
    python3 -m pip install nibabel==5.4.2 dipy==1.12.1 scipy
fi
