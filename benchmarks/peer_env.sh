#!/usr/bin/env bash
# Create benchmarks/.peer-venv: a separate Python 3.11 environment with scvi-tools on a CPU build of
# torch, used by benchmarks/vs_scvi.py (through benchmarks/_scvi_run.py) to compare against probgex.
#
#   bash benchmarks/peer_env.sh            # idempotent: reuses the venv if it is already complete
#   bash benchmarks/peer_env.sh scgen      # benchmarks/.scgen-venv for benchmarks/_scgen_run.py (below)
#
# scGen: PyPI's scgen 2.1.0 (2022, the last release) imports names that scvi-tools removed in 1.0
# (`scvi._compat.Literal`, `scvi.module.base.LossRecorder`): `import scgen` fails beside the scvi-tools
# 1.4.2 of .peer-venv (`ModuleNotFoundError: No module named 'scvi._compat'`). So `scgen` builds a second
# venv, benchmarks/.scgen-venv, on the same CPU torch with scvi-tools 0.19.0 (the last release with LossRecorder) and that era's stack pinned
# by a constraints file (pytorch-lightning 1.7.7, numpy < 2, pandas < 2, anndata < 0.10, jax < 0.4.14, ...),
# and setuptools < 70 (pytorch-lightning 1.7.7 imports pkg_resources).
#
# torch==2.13.0 is installed FIRST and then pinned with a constraints file, so pip never swaps it for
# a (multi-GB) CUDA build while resolving scvi-tools. Override the versions with TORCH_VERSION /
# SCVI_VERSION, or the interpreter with PEER_PYTHON.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.peer-venv"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SCVI_VERSION="${SCVI_VERSION:-1.4.2}"
SCGEN=0
if [[ "${1:-}" == "scgen" ]]; then
    SCGEN=1
    VENV="$HERE/.scgen-venv"
    SCVI_VERSION=0.19.0
fi

if [[ -z "${PEER_PYTHON:-}" ]]; then
    for cand in python3.11 /root/.pyenv/versions/3.11.7/bin/python3.11 python3; do
        if command -v "$cand" >/dev/null 2>&1 && \
           "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            PEER_PYTHON="$cand"; break
        fi
    done
fi
if [[ -z "${PEER_PYTHON:-}" ]]; then
    echo "peer_env.sh: no Python 3.11 found; set PEER_PYTHON" >&2; exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $PEER_PYTHON"
    "$PEER_PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

CONSTRAINTS="$VENV/constraints.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
if [[ $SCGEN == 1 ]]; then
    cat >> "$CONSTRAINTS" <<'EOF'
scvi-tools==0.19.0
scgen==2.1.0
pytorch-lightning==1.7.7
numpy<2
pandas<2
anndata<0.10
scanpy<1.10
jax<0.4.14
jaxlib<0.4.14
flax<0.7.1
chex<0.1.83
optax<0.1.8
numpyro<0.13
torchmetrics<0.12
orbax-checkpoint<0.3
ml-collections<0.1.2
scipy<1.12
matplotlib<3.9
numba<0.60
llvmlite<0.43
mudata<0.3
h5py<3.11
EOF
fi

have() {  # have PKG VERSION: is exactly this version installed?
    "$PY" - "$1" "$2" <<'EOF' 2>/dev/null
import sys, importlib.metadata as md
v = md.version(sys.argv[1])
sys.exit(0 if v.split("+")[0] == sys.argv[2] else 1)
EOF
}

if ! have torch "$TORCH_VERSION"; then
    # A CPU wheel of this version is expected on local disk (PIP_FIND_LINKS); --index-url for the CPU
    # channel is the fallback elsewhere. Never a plain `pip install torch` (that pulls the CUDA build).
    "$PY" -m pip install -q "torch==$TORCH_VERSION" \
        || "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi
if ! have scvi-tools "$SCVI_VERSION"; then
    "$PY" -m pip install -q -c "$CONSTRAINTS" "scvi-tools==$SCVI_VERSION"
fi
if [[ $SCGEN == 1 ]] && ! have scgen 2.1.0; then
    "$PY" -m pip install -q -c "$CONSTRAINTS" "scgen==2.1.0"
fi
if [[ $SCGEN == 1 ]] && ! "$PY" -c "import pkg_resources" 2>/dev/null; then
    # pytorch-lightning 1.7.7 imports pkg_resources, which setuptools >= 81 no longer ships (torch's own
    # setuptools>=77 requirement is for building extensions only, never used here)
    "$PY" -m pip install -q "setuptools<70"
fi

"$PY" - <<'EOF'
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0])
for p in ("torch", "scvi-tools", "lightning", "pytorch-lightning", "scgen", "anndata", "numpy"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "(missing)")
print("torch CUDA build:", torch.version.cuda)
EOF
