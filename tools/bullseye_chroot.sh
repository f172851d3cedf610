# Sourced by docker_envs.sh and build_real_quantizers.sh: a Debian bullseye chroot
# (Python 3.9, as the Vitis AI dockers' Ubuntu has), built once under $ROOT and reused,
# with /proc, /sys and /dev mounted while the calling script runs.
# The caller sets ROOT and defines log and die, and first calls private_mounts "$@".

private_mounts() {
    # Re-run the calling script in a mount namespace of its own: the chroot's mounts are
    # then its alone, and end with it, whatever else mounts or unmounts the same chroot.
    [ -n "${BULLSEYE_PRIVATE_MOUNTS:-}" ] && return 0
    BULLSEYE_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private bash "$0" "$@"
}

mirror() {
    # the first Debian archive URI of this machine's apt sources (deb822 or one-line form)
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}')
    [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                           awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}')
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_chroot() {
    [ -f "$ROOT/.complete" ] && return 0
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    log "debootstrap bullseye from $(mirror) into $ROOT"
    mkdir -p "$(dirname "$ROOT")"
    # built under another name and renamed, so that an interrupted build is never reused
    rm -rf "$ROOT.partial"
    debootstrap --variant=minbase --include=python3,python3-venv,make,ca-certificates \
        bullseye "$ROOT.partial" "$(mirror)"
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.complete"
}

mount_one() {  # type-or-bind source target; it ends with the script's mount namespace
    mountpoint -q "$3" && return 0
    mkdir -p "$3"
    if [ "$1" = bind ]; then mount --bind "$2" "$3"; else mount -t "$1" "$2" "$3"; fi
}

enter_chroot() {
    # mounts for the script's lifetime (its namespace: private_mounts), DNS, and the
    # certificates this machine trusts (an intercepting proxy's CA among them) for pip
    trap 'echo "$(basename "$0"): interrupted" >&2; exit 130' INT TERM
    mount_one proc proc "$ROOT/proc"
    mount_one sysfs sysfs "$ROOT/sys"
    mount_one bind /dev "$ROOT/dev"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    local host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    CHROOT_CA=
    if [ -f "$host_ca" ]; then
        cp -L "$host_ca" "$ROOT/etc/ssl/host-ca-certificates.crt"
        CHROOT_CA=/etc/ssl/host-ca-certificates.crt
    fi
}

in_chroot() {  # VENV COMMAND: run COMMAND with bash in the chroot, the venv's python first on PATH
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb PIP_DISABLE_PIP_VERSION_CHECK=1 \
        ${CHROOT_CA:+PIP_CERT=$CHROOT_CA SSL_CERT_FILE=$CHROOT_CA} \
        ${ATEN_CPU_CAPABILITY:+ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY} ${MKL_CBWR:+MKL_CBWR=$MKL_CBWR} \
        ${OMP_NUM_THREADS:+OMP_NUM_THREADS=$OMP_NUM_THREADS} \
        PATH="$1/bin:/usr/local/bin:/usr/bin:/bin" /bin/bash -c "set -euo pipefail; $2"
}
