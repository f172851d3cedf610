#!/usr/bin/env bash
# Builds Xilinx's own vai_q_pytorch of both releases the flow meets, CPU-only and from
# the sources, for the differential check against the built-in quantizer
# (`make test-real-quantizers`, tools/real_quantizer_check.py):
#   3.5  on this machine's Python, with torch 2.13.0 CPU: unilog and XIR 3.5 (with XIR's
#        Python module), then pytorch_nndct from vai_q_pytorch/pytorch_binding;
#   2.5  in the Debian bullseye chroot of docker_envs.sh, with torch 1.10.1 and numpy
#        1.19.5 as in the Vitis AI 2.5 docker: unilog and XIR 2.5, then its pytorch_binding.
#
# Usage, as root:   make real-quantizers VITIS_AI_SRC=path/to/Vitis-AI
#                   bash tools/build_real_quantizers.sh path/to/Vitis-AI
# VITIS_AI_SRC: a clone of github.com/Xilinx/Vitis-AI (bare or not) with tags v2.5 and v3.5;
# only those tags' sources are used (git archive), whatever is checked out.
# Writes, under $ENVS_DIR (default /var/tmp/vitis-ai-envs, beside docker_envs.sh's chroot):
#   nndct-3.5/venv/bin/python   a Python with pytorch_nndct 3.5 and xir
#   nndct-2.5-python            runs the chroot's Python with pytorch_nndct 2.5 and xir, in
#                               the caller's folder; this checkout and /tmp are seen at the
#                               same paths (bind mounts in a private mount namespace)
# A release already built is kept (delete its folder to rebuild it; REBUILD=1 rebuilds both).
#
# The one change to Xilinx's sources: 3.5's setup.py compiles its CPU kernels with
# -std=c++14, and torch 2.13's headers need C++17; it is given -std=c++17. The quantizers'
# Python and C++ numerics are built as they are. Needs debootstrap, the Debian mirror, PyPI,
# and on this machine cmake, g++, protobuf, glog and boost's development packages (installed
# with apt-get when missing).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # the repository
SRC=${1:-${VITIS_AI_SRC:-}}
ENVS_DIR=${ENVS_DIR:-/var/tmp/vitis-ai-envs}
ROOT=$ENVS_DIR/bullseye
PYTHON=${PYTHON:-python3}          # the host Python for 3.5 (3.8 to 3.11)
JOBS=${JOBS:-$(nproc)}

D35=$ENVS_DIR/nndct-3.5
V25=/opt/vai-nndct-2.5             # in the chroot
LAUNCH25=$ENVS_DIR/nndct-2.5-python

# What each release's docker brings (docs/dockers.md), then what its quantizer imports.
PINS35="torch==2.13.0 numpy==1.24.2 scipy==1.9.3"
PINS25="torch==1.10.1 numpy==1.19.5 protobuf==3.19.6 scipy==1.7.3"
RUNTIME_DEPS="tqdm ninja six tabulate==0.8.9 graphviz==0.19.1 PyYAML networkx pybind11"
BUILD_DEBS="cmake g++ make git pkg-config procps lsb-release libgoogle-glog-dev libgflags-dev libunwind-dev
            libprotobuf-dev protobuf-compiler libboost-dev libboost-filesystem-dev libboost-system-dev"

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'build_real_quantizers.sh: error: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, debootstrap, chroot, mount)"
[ -n "$SRC" ] || die "VITIS_AI_SRC is not set: give a clone of https://github.com/Xilinx/Vitis-AI"
for tag in v2.5 v3.5; do
    git -C "$SRC" rev-parse --verify -q "$tag^{commit}" >/dev/null ||
        die "VITIS_AI_SRC=$SRC: not a Vitis-AI clone with tag $tag (git -C $SRC fetch --tags)"
done

# shellcheck source=bullseye_chroot.sh
. "$HERE/tools/bullseye_chroot.sh"
private_mounts "$@"

# Where each tag keeps the three components (the tree was reorganised between them).
paths_of() {
    case $1 in
        v3.5) echo "src/vai_runtime/unilog src/vai_runtime/xir src/vai_quantizer/vai_q_pytorch" ;;
        v2.5) echo "src/Vitis-AI-Runtime/VART/unilog src/Vitis-AI-Runtime/VART/xir src/Vitis-AI-Quantizer/vai_q_pytorch" ;;
    esac
}

extract() {  # TAG DEST: the tag's unilog, xir and vai_q_pytorch, linked flat in DEST
    # A sparse clone sharing VITIS_AI_SRC's objects: XIR's build asks git for its commit id.
    local tag=$1 dest=$2 tmp=$2.partial
    rm -rf "$tmp" "$dest"
    git clone -q --shared --no-checkout "$SRC" "$tmp/git"
    git -C "$tmp/git" sparse-checkout set $(paths_of "$tag")
    git -C "$tmp/git" -c advice.detachedHead=false checkout -q "$tag"
    for p in $(paths_of "$tag"); do ln -s "git/$p" "$tmp/$(basename "$p")"; done
    mv "$tmp" "$dest"
}

write_build_steps() {  # DIR: the two build steps as scripts, run where the compilers are
    cat > "$1/build-runtime.sh" <<'STEP'
# Unilog, then XIR with its Python module, into PREFIX; the module put on PYTHON's path.
# IS_DISTRIBUTION: Xilinx's switch for distribution builds, which keeps newer compilers'
# maybe-uninitialized warnings in Boost's headers from failing the build (-Werror).
set -euo pipefail
src=$1 build=$2 prefix=$3 python=$4 jobs=$5
cmake -S "$src/unilog" -B "$build/unilog" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
      -DBUILD_TEST=OFF -DBUILD_PYTHON=OFF -DIS_DISTRIBUTION=ON -DCMAKE_INSTALL_PREFIX="$prefix"
cmake --build "$build/unilog" -j "$jobs"
cmake --install "$build/unilog"
# pybind11 from the venv where it is installed there (3.5), else the system's (2.5)
pybind=$("$python" -c "import pybind11; print(pybind11.get_cmake_dir())" 2>/dev/null || true)
cmake -S "$src/xir" -B "$build/xir" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DBUILD_TEST=OFF \
      -DBUILD_CONTRIB=OFF -DBUILD_DOC=OFF -DBUILD_PYTHON=ON -DINSTALL_HOME=ON -DIS_DISTRIBUTION=ON -DCMAKE_INSTALL_PREFIX="$prefix" \
      -DCMAKE_PREFIX_PATH="$prefix" -DPYTHON_EXECUTABLE="$python" ${pybind:+-Dpybind11_DIR="$pybind"}
cmake --build "$build/xir" -j "$jobs"
cmake --install "$build/xir"
echo "$prefix/lib/python" > "$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/vai-xir.pth"
STEP
    cat > "$1/build-nndct.sh" <<'STEP'
# pytorch_nndct from pytorch_binding, CPU only (no CUDA_HOME), installed without dependencies.
set -euo pipefail
src=$1 python=$2
cd "$src/vai_q_pytorch/pytorch_binding"
env -u CUDA_HOME "$python" setup.py --quiet bdist_wheel -d "$src/wheels"
"$python" -m pip install --quiet --no-deps --force-reinstall "$src"/wheels/pytorch_nndct-*.whl
cd / && "$python" -c "import pytorch_nndct, xir; from pytorch_nndct.apis import torch_quantizer; print('pytorch_nndct', pytorch_nndct.__version__, 'imports')"
STEP
}

# ---------------------------------------------------------------- 3.5 on this machine
if [ -n "${REBUILD:-}" ] || [ ! -f "$D35/.complete" ]; then
    log "3.5: $D35 (host $($PYTHON --version), $PINS35)"
    missing=$(for d in $BUILD_DEBS; do dpkg -s "$d" >/dev/null 2>&1 || echo "$d"; done | tr '\n' ' ')
    if [ -n "$missing" ]; then
        log "3.5: apt-get install $missing"
        # shellcheck disable=SC2086
        apt-get install -y --no-install-recommends $missing
    fi
    rm -rf "$D35"
    mkdir -p "$D35"
    extract v3.5 "$D35/src"
    # the C++17 change (above); refused if the line is not found, so a changed tag is noticed
    grep -q "'-std=c++14'" "$D35/src/vai_q_pytorch/pytorch_binding/setup.py" ||
        die "v3.5 pytorch_binding/setup.py: its -std=c++14 flag was not found"
    sed -i "s/'-std=c++14'/'-std=c++17'/" "$D35/src/vai_q_pytorch/pytorch_binding/setup.py"
    "$PYTHON" -m venv "$D35/venv"
    # shellcheck disable=SC2086
    "$D35/venv/bin/python" -m pip install --quiet $PINS35 $RUNTIME_DEPS wheel setuptools
    write_build_steps "$D35"
    bash "$D35/build-runtime.sh" "$D35/src" "$D35/build" "$D35/prefix" "$D35/venv/bin/python" "$JOBS"
    bash "$D35/build-nndct.sh" "$D35/src" "$D35/venv/bin/python"
    touch "$D35/.complete"
fi

# ---------------------------------------------------------------- 2.5 in the chroot
ensure_chroot
enter_chroot
if [ -n "${REBUILD:-}" ] || [ ! -f "$ROOT$V25/.complete" ]; then
    log "2.5: $V25 in $ROOT (python 3.9, $PINS25)"
    in_chroot /usr "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                    $(echo $BUILD_DEBS) pybind11-dev python3-dev python3-venv >/dev/null"
    rm -rf "$ROOT$V25"
    mkdir -p "$ROOT$V25"
    extract v2.5 "$ROOT$V25/src"
    # pip < 24 and setuptools < 60 as in 2.5's days: its setup.py's version string is not PEP 440
    # shellcheck disable=SC2086
    in_chroot $V25 "python3 -m venv $V25 && python -m pip install --quiet 'pip<24' 'setuptools<60' wheel &&
                    python -m pip install --quiet $PINS25 ${RUNTIME_DEPS/pybind11/}"
    write_build_steps "$ROOT$V25"
    in_chroot $V25 "bash $V25/build-runtime.sh $V25/src $V25/build $V25/prefix $V25/bin/python $JOBS"
    in_chroot $V25 "bash $V25/build-nndct.sh $V25/src $V25/bin/python"
    touch "$ROOT$V25/.complete"
fi

# ---------------------------------------------------------------- the 2.5 launcher
cat > "$LAUNCH25.partial" <<LAUNCHER
#!/usr/bin/env bash
# The Python of the chroot's pytorch_nndct 2.5 (tools/build_real_quantizers.sh), in the
# caller's folder; $HERE and /tmp are seen at the same paths. The mounts live in a
# private mount namespace and end with the process. Pinned-kernel settings pass through.
exec unshare --mount --propagation private /bin/bash -c '
    set -e
    for d in /proc:proc /sys:sysfs; do
        mountpoint -q "$ROOT\${d%:*}" || mount -t "\${d#*:}" "\${d#*:}" "$ROOT\${d%:*}"
    done
    for d in /dev "$HERE" /tmp "\$PWD"; do
        mkdir -p "$ROOT\$d"
        mountpoint -q "$ROOT\$d" || mount --bind "\$d" "$ROOT\$d"
    done
    exec chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=$V25/bin:/usr/bin:/bin \
        \${ATEN_CPU_CAPABILITY:+ATEN_CPU_CAPABILITY=\$ATEN_CPU_CAPABILITY} \${MKL_CBWR:+MKL_CBWR=\$MKL_CBWR} \
        \${OMP_NUM_THREADS:+OMP_NUM_THREADS=\$OMP_NUM_THREADS} \${PYTHONPATH:+PYTHONPATH=\$PYTHONPATH} \
        /bin/bash -c "cd \"\\\$0\" && exec python \"\\\$@\"" "\$PWD" "\$@"' launcher "\$@"
LAUNCHER
chmod +x "$LAUNCH25.partial"
mv "$LAUNCH25.partial" "$LAUNCH25"

log "built"
echo "3.5: $D35/venv/bin/python"
echo "2.5: $LAUNCH25"
