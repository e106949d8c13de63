#!/usr/bin/env bash
# Build the release files into dist/: the sdist and one wheel per supported torch.
#   torch 2.14.1 (CUDA 13.0 build): CPU kernels + CUDA kernels for setup.py's default
#                                   architecture list (sm_75 ... sm_120, PTX of sm_120)
#   torch 2.13.0+cpu              : CPU kernels
# Each wheel is compiled from the sdist (never from this folder, whose own build it would
# overwrite) in a virtual environment holding that torch, made once under $VENVS and reused.
#   TORCHES                torch versions to build for (default: "2.14.1 2.13.0+cpu")
#   TORCH_CUDA_ARCH_LIST   GPU architectures (default: setup.py's DEFAULT_CUDA_ARCHS)
#   MAX_JOBS               parallel compile jobs (default 2)
#   VENVS                  where the build environments live (default /tmp/grl_cuda-wheel-venvs)
#   OUT                    output folder (default dist)
#   PYTHON                 interpreter for the environments (default python3); wheels are for its version
set -euo pipefail
cd "$(dirname "$0")/.."
TORCHES="${TORCHES:-2.14.1 2.13.0+cpu}"
VENVS="${VENVS:-/tmp/grl_cuda-wheel-venvs}"
OUT="$(mkdir -p "${OUT:-dist}" && cd "${OUT:-dist}" && pwd)"
export MAX_JOBS="${MAX_JOBS:-2}"

for spec in $TORCHES; do
  venv="$VENVS/torch-$spec"
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$VENVS"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "torch==$spec" ninja "setuptools>=77" wheel build 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  echo "== torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
  start=$(date +%s)
  # sdist first, then the wheel compiled from it (GRL_CUDA=auto: CUDA kernels when torch is a
  # CUDA build and a toolkit is found)
  log="$VENVS/build-torch-$spec.log"
  if ! "$venv/bin/python" -m build --no-isolation --outdir "$OUT" . >"$log" 2>&1; then
    tail -40 "$log"
    echo "build for torch $spec failed; log: $log" >&2
    exit 1
  fi
  grep "^Successfully" "$log"
  echo "   built in $(( $(date +%s) - start )) s"
done
echo "== $OUT:"
ls -l "$OUT"
