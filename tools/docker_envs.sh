#!/usr/bin/env bash
# The flow in environments like the Vitis AI dockers' PyTorch environments, which
# cannot run here (no docker engine): a Debian bullseye chroot (Python 3.9) holding
#   torch-1.10  torch 1.10.1, numpy 1.19.5, protobuf 3.19.6   (as Vitis AI 2.5)
#   torch-1.13  torch 1.13.1, numpy 1.22.4, protobuf 3.20.3   (as Vitis AI 3.5)
# In each: `pip install -r requirements.txt` as README tells a docker user, a check
# that torch, numpy and protobuf were kept, `make stages PY=python` and the tests, on a
# copy of the checkout (the stages rewrite committed outputs).
#
# Usage, as root:   bash docker_envs.sh [CHECKOUT]     (default: this repository)
#                   make test-docker-envs [CHECKOUT=...]
# The chroot and the environments are built once under $ENVS_DIR and reused; each
# environment is rebuilt only when its pins below change (BUILD_ONLY=1: build, nothing else). Needs debootstrap, the
# Debian mirror of this machine's apt and PyPI.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # the repository
CHECKOUT=$(cd "${1:-${CHECKOUT:-$HERE}}" && pwd)
ENVS_DIR=${ENVS_DIR:-/var/tmp/vitis-ai-envs}
ROOT=$ENVS_DIR/bullseye
# "name|pins", the pins being what the docker brings before requirements.txt
ENVS=(
    "torch-1.10|torch==1.10.1 numpy==1.19.5 protobuf==3.19.6"
    "torch-1.13|torch==1.13.1 numpy==1.22.4 protobuf==3.20.3"
)
PYTEST_ARGS=${PYTEST_ARGS:-tests}   # e.g. tests/test_compile.py to run a part again
NO_COMPILER=3   # compile.sh's exit code when vai_c_xir is missing: the stages' expected end

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'docker_envs.sh: error: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, mount)"
[ -f "$CHECKOUT/requirements.txt" ] && [ -f "$CHECKOUT/Makefile" ] || die "$CHECKOUT: not a checkout of this project"

# shellcheck source=bullseye_chroot.sh
. "$HERE/tools/bullseye_chroot.sh"
private_mounts "$@"
ensure_chroot
enter_chroot

# ---------------------------------------------------------------- the environments
# all built first: the downloads (torch of ~1-2 GB each) are then done in one go
for entry in "${ENVS[@]}"; do
    name=${entry%%|*}
    pins=${entry#*|}
    venv=/opt/vai-$name
    if [ "$(cat "$ROOT$venv/.pins" 2>/dev/null)" != "$pins" ]; then
        log "$name: building $venv with $pins"
        rm -rf "$ROOT$venv"
        in_chroot "$venv" "python3 -m venv $venv && python -m pip install --quiet $pins"
        echo "$pins" > "$ROOT$venv/.pins"
    fi
    # bullseye's venv brings pip 20.3; pip<24.1 because newer pip refuses catalyst 22.4's
    # metadata (as on a plain machine), and pip >= 22.2 for the resolution test's --report
    in_chroot "$venv" "python -m pip install --quiet --upgrade 'pip<24.1'"
done
[ -z "${BUILD_ONLY:-}" ] || exit 0

# ---------------------------------------------------------------- each environment
SUMMARY=()
FAILED=0
for entry in "${ENVS[@]}"; do
    name=${entry%%|*}
    pins=${entry#*|}
    venv=/opt/vai-$name
    work=/work/$name
    start=$(date +%s)
    status=ok

    # two copies: the stages rewrite the committed outputs, which the tests check
    log "$name: copies of $CHECKOUT in $work/stages and $work/tests"
    rm -rf "$ROOT$work"
    for copy in stages tests; do
        mkdir -p "$ROOT$work/$copy"
        tar -C "$CHECKOUT" --exclude=./.git --exclude=./.venv --exclude='__pycache__' -cf - . |
            tar -C "$ROOT$work/$copy" -xf -
    done

    # What the docker brought, then the docker user's install, then the check.
    versions="python -c 'import torch, numpy, google.protobuf as p; print(\"torch==\" + torch.__version__.split(\"+\")[0],
              \"numpy==\" + numpy.__version__, \"protobuf==\" + p.__version__)'"
    log "$name: pip install -r requirements.txt -r requirements-test.txt"
    if ! in_chroot "$venv" "cd $work/stages && python -m pip install --quiet -r requirements.txt &&
                            python -m pip install --quiet -r requirements-test.txt"; then
        status="pip install failed"
    fi
    kept=$(in_chroot "$venv" "$versions" || echo "import failed")
    if [ "$kept" != "$pins" ]; then
        status="replaced: now $kept"
    fi
    echo "$name: $kept (docker pins: $pins)"

    stages=skipped
    tests=skipped
    changed=
    if [ "$status" = ok ]; then
        log "$name: make stages PY=python"
        if in_chroot "$venv" "cd $work/stages && make stages PY=python"; then
            stages="ok (compile ended at exit $NO_COMPILER: no vai_c_xir)"
        else
            stages="failed"; status="stages failed"
        fi
        # which committed outputs the stages rewrote with other bytes (same versions: none)
        changed=$(cd "$ROOT$work/stages" && for f in $(cd "$CHECKOUT" && { git ls-files data checkpoints logs quantize_result 2>/dev/null ||
                                                            find data checkpoints logs quantize_result -type f; }); do
                      cmp -s "$f" "$CHECKOUT/$f" || echo "$f"; done | tr '\n' ' ')
        echo "$name: committed outputs with other bytes: ${changed:-none}"
        log "$name: pytest"
        # -rs lists every skip with its reason
        if in_chroot "$venv" "cd $work/tests && python -m pytest -q -rs $PYTEST_ARGS 2>&1 | tee /tmp/pytest-$name.log"; then
            :
        else
            status="tests failed"
        fi
        tests=$(tail -n 1 "$ROOT/tmp/pytest-$name.log")
    fi
    [ "$status" = ok ] || FAILED=1
    SUMMARY+=("$name: $status | kept: $kept | stages: $stages | rewritten: $(echo $changed | wc -w) committed outputs | tests: $tests | $(( $(date +%s) - start )) s")
done

log "summary (checkout $CHECKOUT)"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
