#!/usr/bin/env bash
# The one script a session with a GPU runs: the GPU tests, then benchmarks/gpu.py.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh      (OUT defaults to benchmarks/results)
#
# Runs from the checkout (PYTHONPATH=., no install) with pytest's addopts cleared, since a
# device image may lack nbval and ipywidgets. Writes to $OUT: environment.txt, gpu-tests.txt,
# gpu-tests.xml, gpu.json, gpu.md, gpu-bench.txt. About 5 minutes: the tests stop at 150 s,
# the benchmark starts no row after 150 s (rows run in priority order, see benchmarks/gpu.py).
# Exit status: that of the tests, or of the benchmark when the tests passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=.

python - >"$OUT/environment.txt" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as error:
    print("triton: not importable:", error)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
else:
    print("device: no CUDA")
EOF
cat "$OUT/environment.txt"

timeout 150 python -m pytest -o addopts="" -p no:cacheprovider -q -rs \
  --junitxml="$OUT/gpu-tests.xml" tests/test_triton_gpu.py 2>&1 | tee "$OUT/gpu-tests.txt"
tests=${PIPESTATUS[0]}

timeout 270 python -m benchmarks.gpu --budget 150 --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.txt"
bench=${PIPESTATUS[0]}

echo "gpu_check: tests exit $tests, benchmark exit $bench"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
