#!/usr/bin/env bash
# Kura's single entry point. Run as root on a Debian machine:
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
  dev     start a local appliance: a private PostgreSQL cluster under ./state,
          kura-vault and kura-console on https://127.0.0.1:8443 (self-signed).
          Prints the URL, the certificate fingerprint and the first DA's
          one-time password. KURA_DA_PASSWORD=... sets that password instead;
          KURA_STATE_DIR=... puts the state elsewhere; KURA_PORT=... the port.
          Ctrl-C stops everything; running it again reuses the data.
  test    run every test against a real PostgreSQL, then ruff and mypy.
          Extra arguments go to pytest (e.g. ./build.sh test -k numbers).
  help    show this text
USAGE
}

# Debian packages the product and its tests need on the host.
apt_packages=(postgresql python3 python3-venv python3-dev gcc libpq-dev systemd openssl)

ensure_host() {
    [ "$(id -u)" = 0 ] || die "run me as root" "sudo ./build.sh $*"
    [ -c /dev/null ] || die "/dev/null is not a character device on this host" \
        "rm -f /dev/null && mknod -m 666 /dev/null c 1 3"
    local missing=()
    for p in "${apt_packages[@]}"; do
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

ensure_venv() {
    local stamp="$venv/.kura-stamp" want
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    say "preparing the Python environment in .venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel
    "$venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e '.[test]' psycopg-binary ruff
    echo "$want" >"$stamp"
}

cmd_dev() {
    ensure_host dev
    ensure_venv
    exec "$venv/bin/kura" dev "$@"
}

cmd_test() {
    ensure_host test
    ensure_venv
    say "ruff"
    "$venv/bin/ruff" check daemons tests benchmarks
    say "mypy"
    "$venv/bin/mypy"
    say "pytest"
    "$venv/bin/python" -m pytest "$@"
}

case "${1:-help}" in
    dev) shift; cmd_dev "$@" ;;
    test) shift; cmd_test "$@" ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
esac
