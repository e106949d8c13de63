#!/usr/bin/env bash
# Builds and runs tools/ulp_cpu_math.cpp against the torch headers of .venv (a few seconds of compile, ~1 minute of sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
inc="$(CUDA_HOME=${CUDA_HOME:-/nonexistent} .venv/bin/python -W ignore -c 'import torch.utils.cpp_extension as e; print(e.include_paths()[0])')"
out="$(mktemp -d)/ulp"
c++ -O2 -std=c++20 -I csrc -I "$inc" tools/ulp_cpu_math.cpp -o "$out"
"$out"
