#!/usr/bin/env bash
# Kura's single entry point. Run as root on a Debian machine:
#   ./build.sh run    build the appliance image (if needed) and boot it in QEMU
#   ./build.sh dev    run the appliance locally (private PostgreSQL, vault, console)
#   ./build.sh test   install what the tests need and run all of them, ruff and mypy
# Each command installs what it needs itself (apt-get, then pip into .venv).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$top"
venv="$top/.venv"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'build.sh: %s\n' "$1" >&2; [ $# -gt 1 ] && printf '  hint: %s\n' "$2" >&2; exit 1; }

usage() {
    cat <<'USAGE'
usage: ./build.sh COMMAND

commands:
  run     build the appliance image if it is missing or stale, then boot it
          in QEMU (UEFI, software TPM; KVM when it works, else emulation)
          with the console's HTTPS port forwarded to https://127.0.0.1:8443/.
          The terminal becomes the appliance's serial console (the first-boot
          wizard); Ctrl-A X quits. The machine is kept in state/vm.
          Options go to image/vm.py run (e.g. --fresh, --setup answers.toml).
  image   build the disk image into out/: kura.raw, kura.qcow2, SHA256SUMS,
          packages.txt (Debian trixie, versions pinned by image/packages.lock)
  image-lock
          refresh image/packages.lock from provisioning/packages.txt
  verify-repro
          build the image twice and say whether the bytes are identical
          (names the differing files when not)
  dev     start a local appliance: a private PostgreSQL cluster under ./state,
          kura-vault and kura-console on https://127.0.0.1:8443 (self-signed).
          Prints the URL, the certificate fingerprint and the first DA's
          one-time password. KURA_DA_PASSWORD=... sets that password instead;
          KURA_STATE_DIR=... puts the state elsewhere; KURA_PORT=... the port.
          Ctrl-C stops everything; running it again reuses the data.
  test    build the image (if stale), then run every test: ruff, mypy, and
          pytest against a real PostgreSQL and the image booted in QEMU.
          Extra arguments go to pytest (e.g. ./build.sh test -k numbers).
  agent-deb
          build kura-agent's Debian package for clerk PCs and business
          servers: out/kura-agent_<version>_all.deb (docs/agents.md)
  help    show this text
USAGE
}

# Debian packages the product and its tests need on the host.
apt_packages=(postgresql python3 python3-venv python3-dev gcc libpq-dev systemd openssl git
              iproute2 iputils-ping iputils-arping  # kura-hasync and its namespace tests
              chromium fonts-noto-cjk  # the web console's tests drive a real Chromium
              # kura-agent enforces bundles with nftables through Debian's Python binding
              # (not on PyPI; ensure_venv links just that module in) and switches USB mass
              # storage with usbguard; its tests build rules with both (daemon not started).
              nftables python3-nftables usbguard)
# ... and what builds and boots the image.
image_packages=(mmdebstrap debian-archive-keyring e2fsprogs dosfstools mtools fdisk zstd
                qemu-utils qemu-system-x86 ovmf swtpm swtpm-tools)

ensure_host() {
    [ "$(id -u)" = 0 ] || die "run me as root" "sudo ./build.sh $*"
    [ -c /dev/null ] || die "/dev/null is not a character device on this host" \
        "rm -f /dev/null && mknod -m 666 /dev/null c 1 3"
    local missing=()
    for p in "${apt_packages[@]}" "${image_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # The system cluster is not ours: Kura runs its own private clusters.
    id postgres >/dev/null 2>&1 || die "the postgres system user is missing" "apt-get install --reinstall postgresql-common"
}

# Debian's nftables binding is not on PyPI: expose that one module to the venv
# (a symlink in site-packages), not the whole of /usr/lib/python3/dist-packages,
# whose other modules would shadow the pinned ones. Idempotent and cheap, so it
# runs on every call, also when the venv itself is up to date.
link_nftables() {
    local system=/usr/lib/python3/dist-packages/nftables site
    [ -d "$system" ] || return 0
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    [ "$(readlink "$site/nftables" 2>/dev/null)" = "$system" ] || ln -sfn "$system" "$site/nftables"
}

ensure_venv() {
    local stamp="$venv/.kura-stamp" want
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        link_nftables
        return
    fi
    say "preparing the Python environment in .venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel
    "$venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e '.[test]' psycopg-binary ruff
    link_nftables
    echo "$want" >"$stamp"
}

cmd_dev() {
    ensure_host dev
    ensure_venv
    exec "$venv/bin/kura" dev "$@"
}

# The image is rebuilt when anything that goes into it changed.
image_inputs() {
    git ls-files -z daemons firstboot systemd provisioning image webui pyproject.toml \
        | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

ensure_image() {
    local stamp=out/.image-inputs want
    want=$(image_inputs)
    if [ -f out/kura.qcow2 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    say "building the appliance image (out/)"
    "$venv/bin/python" image/build.py build --out out
    echo "$want" >"$stamp"
}

cmd_image() {
    ensure_host image
    ensure_venv
    rm -f out/.image-inputs
    ensure_image
}

cmd_image_lock() {
    ensure_host image-lock
    ensure_venv
    "$venv/bin/python" image/build.py lock --out out
}

cmd_verify_repro() {
    ensure_host verify-repro
    ensure_venv
    "$venv/bin/python" image/build.py verify-repro --out out
}

cmd_run() {
    ensure_host run
    ensure_venv
    ensure_image
    exec "$venv/bin/python" image/vm.py run --image out/kura.qcow2 --state state/vm "$@"
}

cmd_test() {
    ensure_host test
    ensure_venv
    say "ruff"
    "$venv/bin/ruff" check daemons firstboot image provisioning tests benchmarks
    say "mypy"
    "$venv/bin/mypy"
    ensure_image
    say "pytest"
    KURA_IMAGE_TESTS=1 "$venv/bin/python" -m pytest "$@"
}

cmd_agent_deb() {
    command -v dpkg-deb >/dev/null || die "dpkg-deb is missing" "apt-get install dpkg"
    python3 packaging/agent/build_deb.py --out out
}

case "${1:-help}" in
    run) shift; cmd_run "$@" ;;
    image) shift; cmd_image ;;
    image-lock) shift; cmd_image_lock ;;
    verify-repro) shift; cmd_verify_repro ;;
    dev) shift; cmd_dev "$@" ;;
    agent-deb) shift; cmd_agent_deb ;;
    test) shift; cmd_test "$@" ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
esac
