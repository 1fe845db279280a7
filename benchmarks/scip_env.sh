#!/usr/bin/env bash
# Create (idempotently) a virtual environment with SCIP 0.1.12, the tool scip_gpu follows, and
# print the path of its python on the last line of stdout.
#
#   benchmarks/scip_env.sh                   # -> benchmarks/.work/scip-venv/bin/python
#   SCIP_VENV=/tmp/scipenv benchmarks/scip_env.sh   # reuse an existing SCIP venv
#
# Environment variables:
#   SCIP_VENV   an existing (or wanted) venv folder. If it already holds a working SCIP 0.1.12 it
#               is used as is; if the folder does not exist it is created there. When unset, the
#               default is benchmarks/.work/scip-venv (git-ignored).
#   PYTHON      the Python 3.11 interpreter used to create the venv (default: python3.11 on PATH).
#
# SCIP is GPL-3.0: it is installed from PyPI into this separate venv and called as a subprocess;
# none of its code lives in this repository. Its old pins (numpy 1.23, dask 2022.12, numba 0.57)
# need Python 3.11 at the newest, and setuptools < 70 to build its sdist-only dependencies.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SCIP_VENV:-$HERE/.work/scip-venv}"
PY="${PYTHON:-python3.11}"

log() { echo "[scip_env] $*" >&2; }

check() {  # does $1/bin/python run SCIP 0.1.12 with its pinned stack?
    "$1/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as m
assert m.version("scip") == "0.1.12", m.version("scip")
assert m.version("numpy") == "1.23.5"
assert m.version("zarr") == "2.13.6"
import scip.main, zarr, numcodecs, pyarrow, psutil  # noqa: F401
EOF
}

if [ -x "$VENV/bin/python" ] && check "$VENV"; then
    log "reusing SCIP 0.1.12 venv at $VENV"
    echo "$VENV/bin/python"
    exit 0
fi

if [ -n "${SCIP_VENV:-}" ] && [ -e "$VENV" ] && [ -n "$(ls -A "$VENV" 2>/dev/null)" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    log "error: SCIP_VENV=$VENV exists but is not a virtual environment; unset SCIP_VENV or point it at a venv"
    exit 2
fi

if ! command -v "$PY" >/dev/null 2>&1; then
    log "error: $PY not found; SCIP 0.1.12's pins need Python 3.11. Set PYTHON=/path/to/python3.11"
    exit 2
fi
ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$ver" != "3.11" ]; then
    log "error: $PY is Python $ver; SCIP 0.1.12's pins (numpy 1.23.5, numba 0.57.1) need Python 3.11"
    exit 2
fi

log "creating SCIP 0.1.12 venv at $VENV with $PY (Python $ver); this takes a few minutes"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || true
"$VENV/bin/python" -m pip install --quiet "setuptools<70" wheel >&2
"$VENV/bin/python" -m pip install --quiet \
    scip==0.1.12 numpy==1.23.5 "dask[distributed]==2022.12.1" distributed==2022.12.1 \
    pandas==1.5.3 scikit-image==0.20.0 scipy==1.10.1 numba==0.57.1 llvmlite==0.40.1 \
    pyarrow==11.0.0 anndata==0.8.0 zarr==2.13.6 numcodecs==0.11.0 tifffile==2023.2.28 \
    aicsimageio==4.9.4 h5py==3.8.0 psutil >&2

if ! check "$VENV"; then
    log "error: the venv at $VENV was created but 'import scip' with the pinned stack fails:"
    "$VENV/bin/python" -c "import scip.main" >&2 || true
    exit 1
fi
log "ready: $("$VENV/bin/scip" --version 2>/dev/null || echo 'scip 0.1.12')"
echo "$VENV/bin/python"
