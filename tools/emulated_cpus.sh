#!/usr/bin/env bash
# The bit-exact suites on other x86-64 CPUs than this one, under QEMU's user-mode emulation:
# Intel's Haswell (AVX2, FMA), Skylake-Server (AVX-512 asked for: QEMU 7.2 cannot emulate it
# and runs the model without it, so MKL and numpy see an Intel CPU without AVX-512), Nehalem
# (SSE4.2, no AVX) and AMD's EPYC. torch, MKL and numpy read the emulated CPUID and choose
# their code paths by it, and the pins (flow/kernels.py) must make every result the same.
#
# One kernel follows the CPU whatever the pins say: torch.sqrt, MKL's refinement of the CPU's
# rsqrtps estimate. QEMU's rsqrtps is exact, no hardware's is, so under emulation the tests
# marked GOLDEN_SQRT (Adam's steps compared with the goldens) skip and say why; every other
# test must pass. docs/reproducibility.md has what this measured.
#
# With PIPELINE=1 each model also runs `make stages` on a clone of the checkout's last commit,
# every process emulated (a venv whose python is QEMU running the real one), and says how many
# committed results it reproduced (tools/reproduced.sh): about 10 minutes a model more.
#
# Usage: bash tools/emulated_cpus.sh [CPU model ...]     (PY: the Python of a venv, default .venv/bin/python)
# Needs qemu-x86_64 (Debian's qemu-user; installed here when run as root). About 5 minutes a
# model on 2 cores. Not part of .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
MODELS=("$@")
[[ ${#MODELS[@]} -gt 0 ]] || MODELS=(Haswell-v4 Skylake-Server-v4 Nehalem-v2 EPYC-v3)
# The suites that compare with the goldens in the test process itself (QEMU's user mode
# emulates one process; the suites that run the stage scripts are left to make test).
SUITES=(tests/test_quantizer_golden.py tests/test_layers_golden.py tests/test_vai25_golden.py
        tests/test_qat_golden.py tests/test_finetune.py tests/test_fixpoint_search.py
        tests/test_differential.py tests/test_dpu.py tests/test_calibration_record.py)

if ! command -v qemu-x86_64 >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y -qq qemu-user >/dev/null
    else
        echo "emulated-cpus: needs qemu-x86_64 (Debian: apt-get install qemu-user)" >&2
        exit 2
    fi
fi
[[ -x $PY ]] || { echo "emulated-cpus: $PY: no such Python (make install first, or PY=...)" >&2; exit 2; }

# QEMU warns once per CPU feature it cannot emulate; what the guest sees is printed instead.
quiet() { grep -v "TCG doesn't support requested feature" || true; }
# What the emulated CPU looks like to numpy, and its torch.sqrt.
probe='import numpy
from flow import kernels
kernels.pin()
features = getattr(numpy.__config__, "__cpu_features__", {})
sqrt = kernels.sqrt_fingerprint()
print("numpy sees {}; sqrt {} ({}the golden machine'"'"'s)".format(
    " ".join(f for f in ("SSE42", "AVX", "FMA3", "AVX2", "AVX512F") if features.get(f)), sqrt,
    "" if sqrt == kernels.COMMITTED_SQRT else "not "))'

echo "emulated-cpus: this machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), sqrt $(
    PYTHONPATH=. "$PY" -c 'from flow import kernels; kernels.pin(); print(kernels.sqrt_fingerprint())')"
# The pipeline with every process on the emulated CPU: a venv beside the real one whose
# python runs the real one under QEMU, named so (qemu's -0) that sys.executable is the
# wrapper and the stages a stage starts are emulated too.
pipeline() {
    local model=$1 venv work
    venv=$(cd "$(dirname "$PY")/.." && pwd)
    [[ -f $venv/pyvenv.cfg ]] || { echo "emulated-cpus: PIPELINE=1 needs PY in a venv" >&2; failed=1; return; }
    work=$(mktemp -d)
    mkdir -p "$work/venv/bin"
    cp "$venv/pyvenv.cfg" "$work/venv/"
    ln -s "$venv/lib" "$work/venv/lib"
    printf '#!/bin/bash\nexec qemu-x86_64 -cpu %q -0 "$0" %q "$@" 2> >(grep -v "TCG doesn.t support" >&2)\n' \
        "$model" "$(readlink -f "$PY")" > "$work/venv/bin/python"
    chmod +x "$work/venv/bin/python"
    git clone -q . "$work/checkout"
    if (cd "$work/checkout" && make stages PY="$work/venv/bin/python" > "$work/stages.log" 2>&1); then
        (cd "$work/checkout" && bash tools/reproduced.sh) > "$work/reproduced.txt"
        echo "emulated-cpus: $model: $(head -1 "$work/reproduced.txt")"
        tail -n +2 "$work/reproduced.txt" | sed 's/^/  /'
        # "pipeline: reproduced N of M ...": anything but N = M is a failure here
        read -r _ _ n _ m _ < "$work/reproduced.txt"
        [[ $n == "$m" ]] || failed=1
    else
        echo "emulated-cpus: $model: make stages FAILED:"
        tail -5 "$work/stages.log" | sed 's/^/  /'
        failed=1
    fi
    rm -rf "$work"
}

failed=0
for model in "${MODELS[@]}"; do
    echo "emulated-cpus: $model: $(PYTHONPATH=. qemu-x86_64 -cpu "$model" "$PY" -c "$probe" 2>&1 | quiet)"
    log=$(mktemp)
    if PYTHONPATH=. qemu-x86_64 -cpu "$model" "$PY" -m pytest -q -rfEs -p no:cacheprovider "${SUITES[@]}" \
            > "$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed=1
    fi
    echo "emulated-cpus: $model: $status: $(quiet < "$log" | tail -1)"
    [[ $status == ok ]] || quiet < "$log" | grep -E '^(FAILED|ERROR)' | sed 's/^/  /' || true
    grep -E '^SKIPPED' "$log" | sed 's/^/  /' || true
    rm -f "$log"
    if [[ ${PIPELINE:-0} == 1 ]]; then pipeline "$model"; fi
done
exit $failed
