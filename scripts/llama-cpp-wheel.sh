#!/usr/bin/env bash
# Build llama-cpp-python's wheel once (it has none on the index: pip compiles llama.cpp, ~8 min on 2 cores)
# and keep it in a cache folder that later installs read with --find-links.
set -euo pipefail
PY=${1:?usage: llama-cpp-wheel.sh PYTHON [VERSION]}
VERSION=${2:-0.3.36}
WHEELS=${LLMFORGE_WHEELS:-$HOME/.cache/llmforge/wheels}
mkdir -p "$WHEELS"
if ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "llama-cpp-python $VERSION: cached wheel in $WHEELS"
  exit 0
fi
echo "llama-cpp-python $VERSION: compiling llama.cpp into a wheel (about 8 minutes on 2 cores)..."
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} "$PY" -m pip wheel --no-deps -w "$WHEELS" "llama-cpp-python==$VERSION"
