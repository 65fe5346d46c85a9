"""``kura witness``: the pair's third vote on any Debian host (or a Kura image set up
as witness). It keeps the formation's CA and passwords and runs pg_auto_failover's
monitor; a data node joins with the enrol code and an enrolment file from here.

Layout of the witness's folder (default /var/lib/kura-witness, owner postgres, 0750):

    witness.json     address, port, pgdata (not secret)
    tls/ca.crt       the formation's CA (0644)
    tls/ca.key       its private key (0600 postgres; only ``kura witness enrol`` reads it)
    tls/server.crt   the monitor's certificate, the address as subject alternative name
    tls/server.key   (0600 postgres)
    passwords.json   the formation's account passwords (0600 postgres)
    pgpass           the same as a libpq password file (0600; PGPASSFILE of the unit)
    pgdata/          the monitor's PostgreSQL

Programs run through a ``Runner`` so that tests can record the command lines.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kura.core import formation
from kura.core import witness as core
from kura.core.errors import KuraError

DEFAULT_DIR = Path("/var/lib/kura-witness")
UNIT = "kura-witness.service"
DROPIN = Path("/etc/systemd/system/kura-witness.service.d/50-dir.conf")
SERVICE_USER = "postgres"

# (argv, standard input, user to run as, extra environment) -> standard output
Runner = Callable[[list[str], str | None, str, dict[str, str]], str]


def real_runner(argv: list[str], stdin: str | None, user: str, env: dict[str, str]) -> str:
    """Run as ``user`` (runuser when we are root and another user is wanted: pg_autoctl
    refuses to run as root); secrets only ever on standard input."""
    program = argv[0]
    if os.geteuid() == 0 and user != "root":
        argv = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()),
                *argv]
        environment = None
    else:
        environment = {**os.environ, **env}
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                          env=environment, timeout=600)
    if done.returncode:
        raise KuraError(
            f"{program} failed ({done.returncode}): {done.stderr.strip()[-1500:]}",
            f"コマンドが失敗しました（{done.returncode}）: {done.stderr.strip()[-1500:]}")
    return done.stdout


@dataclass(frozen=True)
class Layout:
    top: Path

    @property
    def tls(self) -> Path:
        return self.top / "tls"

    @property
    def pgdata(self) -> Path:
        return self.top / "pgdata"

    @property
    def state(self) -> Path:
        return self.top / "witness.json"

    @property
    def passwords(self) -> Path:
        return self.top / "passwords.json"

    @property
    def pgpass(self) -> Path:
        return self.top / "pgpass"

    def tls_files(self) -> formation.TlsFiles:
        return formation.TlsFiles(str(self.tls / "ca.crt"), str(self.tls / "server.crt"),
                                  str(self.tls / "server.key"))


def _owner() -> tuple[int, int] | None:
    """postgres's uid and gid when we are root (and the user exists), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _write(path: Path, data: bytes | str, mode: int) -> None:
    body = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(body)
    os.chmod(path, mode)
    owner = _owner()
    if owner is not None:
        os.chown(path, *owner)


def _mkdir(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)
    owner = _owner()
    if owner is not None:
        os.chown(path, *owner)


def init_commands(layout: Layout, address: str) -> list[list[str]]:
    """What ``init`` runs as postgres, in order, besides the SQL (tests compare them)."""
    pg_ctl = f"{formation.PG_BIN}/pg_ctl"
    return [
        formation.create_monitor(str(layout.pgdata), address, layout.tls_files()),
        [pg_ctl, "status", "-D", str(layout.pgdata)],
        [pg_ctl, "start", "-w", "-D", str(layout.pgdata), "-l", str(layout.top / "init.log")],
        [pg_ctl, "stop", "-w", "-m", "fast", "-D", str(layout.pgdata)],
    ]


# pg_autoctl's monitor listener connects over the Unix socket as autoctl_node; with
# initdb's trust gone, only the postgres user of the host may do that (peer, mapped).
MONITOR_IDENT = f"kura_witness   postgres   {formation.MONITOR_USER}"
MONITOR_LOCAL = (f"local   {formation.MONITOR_DB}   {formation.MONITOR_USER}   "
                 "peer map=kura_witness")


def monitor_hba(current: str) -> str:
    """The monitor's pg_hba.conf: no trust (formation.secure_hba), the listener's line
    first."""
    lines = formation.secure_hba(current).splitlines()
    if MONITOR_LOCAL in lines:
        return "\n".join(lines) + "\n"
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")),
              len(lines))
    return "\n".join([*lines[:at], MONITOR_LOCAL, *lines[at:]]) + "\n"


def settings_sql(passwords: dict[str, str]) -> str:
    """The monitor's account passwords and its tuned timers (kura.core.formation)."""
    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"
    return (f"ALTER ROLE {formation.MONITOR_USER} PASSWORD "
            f"{literal(passwords[formation.MONITOR_USER])};"
            # MemoryDenyWriteExecute= in the unit: no JIT (llvm) code in the monitor
            "ALTER SYSTEM SET jit = 'off';" + formation.monitor_settings_sql())


def init(address: str, top: Path, runner: Runner = real_runner,
         port: int = formation.PORT, name: str | None = None,
         now: datetime.datetime | None = None) -> core.EnrolCode:
    """Make the CA, the monitor's certificate and passwords, and the monitor itself with
    the formation's timers; returns the enrol code. Refuses a folder already set up."""
    layout = Layout(top)
    if layout.state.exists():
        raise KuraError(f"{top} already holds a witness; refusing to replace its CA",
                        f"{top} には既にウィットネスがあります。CA は作り直しません。")
    if layout.pgdata.exists():
        raise KuraError(f"an earlier kura witness init in {top} did not finish; no node can "
                        f"have joined it: remove {top} and run it again",
                        f"{top} での以前の kura witness init は完了していません（参加したノードは"
                        f"ありません）。{top} を削除して再実行してください。")
    when = now or datetime.datetime.now(datetime.UTC)
    if port != formation.PORT:
        raise KuraError(f"only port {formation.PORT} is supported",
                        f"ポートは {formation.PORT} のみ使えます。")
    ca = core.make_ca(name or address, when)
    server = core.issue(ca, "monitor", address, when)
    passwords = core.new_passwords()
    _mkdir(top, 0o750)
    _mkdir(layout.tls, 0o750)
    _write(layout.tls / "ca.crt", ca.cert_pem, 0o644)
    _write(layout.tls / "ca.key", ca.key_pem, 0o600)
    _write(layout.tls / "server.crt", server.cert_pem, 0o644)
    _write(layout.tls / "server.key", server.key_pem, 0o600)
    _write(layout.passwords, json.dumps(passwords, indent=1) + "\n", 0o600)
    _write(layout.pgpass, core.pgpass(passwords), 0o600)
    env = {"PGPASSFILE": str(layout.pgpass)}
    create, status, start, stop = init_commands(layout, address)
    runner(create, None, SERVICE_USER, env)
    hba = layout.pgdata / "pg_hba.conf"
    if hba.exists():  # (the recorded runner of the tests makes no cluster)
        _write(hba, monitor_hba(hba.read_text(encoding="utf-8")), 0o600)
        ident = layout.pgdata / "pg_ident.conf"
        current = ident.read_text(encoding="utf-8") if ident.exists() else ""
        if MONITOR_IDENT not in current:
            _write(ident, current + MONITOR_IDENT + "\n", 0o600)
    started = False
    try:
        runner(status, None, SERVICE_USER, env)
    except KuraError:  # not running: start it for the settings, then stop it again
        runner(start, None, SERVICE_USER, env)
        started = True
    try:
        runner(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", str(port), "-d",
                formation.MONITOR_DB], settings_sql(passwords), SERVICE_USER, env)
    finally:
        if started:
            runner(stop, None, SERVICE_USER, env)
    code = core.EnrolCode(address, port, core.ca_pin(ca.cert_pem))
    _write(layout.state, json.dumps({"address": address, "port": port,
                                     "pgdata": str(layout.pgdata)}, indent=1) + "\n", 0o644)
    return code


def dropin(top: Path) -> str | None:
    """The unit's drop-in for a folder other than the default, or None."""
    if top == DEFAULT_DIR:
        return None
    layout = Layout(top)
    return ("# Written by kura witness init: the witness lives in another folder.\n"
            "[Service]\n"
            f"Environment=PGDATA={layout.pgdata}\n"
            f"Environment=PGPASSFILE={layout.pgpass}\n"
            f"ReadWritePaths={top}\n")


def load_code(top: Path) -> core.EnrolCode:
    layout = Layout(top)
    try:
        state = json.loads(layout.state.read_text(encoding="utf-8"))
        ca_pem = (layout.tls / "ca.crt").read_bytes()
    except (OSError, ValueError):
        raise KuraError(f"no witness in {top} (run kura witness init first)",
                        f"{top} にウィットネスがありません（先に kura witness init を実行）。"
                        ) from None
    return core.EnrolCode(str(state["address"]), int(state["port"]), core.ca_pin(ca_pem))


def enrol(top: Path, node: str, address: str,
          now: datetime.datetime | None = None) -> core.Bundle:
    """A node's enrolment bundle: its certificate (made and signed here) and the
    formation's passwords. Needs the CA's key: run as root or postgres."""
    code = load_code(top)
    layout = Layout(top)
    try:
        ca = core.Issued((layout.tls / "ca.crt").read_bytes(),
                         (layout.tls / "ca.key").read_bytes())
        passwords = json.loads(layout.passwords.read_text(encoding="utf-8"))
    except PermissionError:
        raise KuraError("cannot read the witness's CA key: run as root or postgres",
                        "ウィットネスの CA 鍵を読めません。root か postgres で実行してください。"
                        ) from None
    return core.make_bundle(ca, code, node, address, passwords,
                            now or datetime.datetime.now(datetime.UTC))


def write_bundle(bundle: core.Bundle, path: Path) -> None:
    """0600, created new: it holds the node's private key and the passwords."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(bundle.to_json())
