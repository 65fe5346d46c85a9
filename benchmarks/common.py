"""What the benchmarks share: a whole local appliance (private PostgreSQL,
kura-vault, kura-console) in a temporary folder, an MU signed in the way a
user is (first DA, password change, TOTP where the policy asks for it), and
generated subjects with valid but made-up My Numbers.

Everything a benchmark starts is stopped and its folder removed when the
``appliance()`` context ends, also on Ctrl-C or an error."""

from __future__ import annotations

import math
import os
import random
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from kura.console.vaultclient import VaultClient
from kura.core.numbers import my_number_check_digit
from kura.devserver import LocalAppliance, free_port

FAMILY = ("佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤")
FAMILY_KANA = (
    "サトウ",
    "スズキ",
    "タカハシ",
    "タナカ",
    "イトウ",
    "ワタナベ",
    "ヤマモト",
    "ナカムラ",
    "コバヤシ",
    "カトウ",
)
GIVEN = ("太郎", "花子", "一郎", "美咲", "健太", "陽菜", "翔", "結衣", "大輔", "さくら")
GIVEN_KANA = (
    "タロウ",
    "ハナコ",
    "イチロウ",
    "ミサキ",
    "ケンタ",
    "ヒナ",
    "ショウ",
    "ユイ",
    "ダイスケ",
    "サクラ",
)


# --- generated subjects ---------------------------------------------------------


def my_numbers(count: int, seed: int = 1) -> list[str]:
    """``count`` distinct made-up My Numbers with valid check digits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        first = f"{rng.randrange(10**11):011d}"
        number = first + str(my_number_check_digit(first))
        if number not in seen and number != "0" * 12:
            seen.add(number)
            out.append(number)
    return out


def payee_rows(count: int, seed: int = 1, prefix: str = "B") -> list[dict[str, str]]:
    """Import rows as a payroll integration sends them: one payee each."""
    rng = random.Random(seed + 7)
    rows = []
    for i, number in enumerate(my_numbers(count, seed)):
        f, g = rng.randrange(len(FAMILY)), rng.randrange(len(GIVEN))
        rows.append(
            {
                "kind": "payee",
                "code": f"{prefix}{i:07d}",
                "name": f"{FAMILY[f]}\u3000{GIVEN[g]}",
                "name_kana": f"{FAMILY_KANA[f]}\u3000{GIVEN_KANA[g]}",
                "number": number,
            }
        )
    return rows


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the appliance ----------------------------------------------------------------


@contextmanager
def appliance(name: str) -> Iterator[LocalAppliance]:
    """A fresh appliance in a temporary folder, host-sealed (unsealed at start)."""
    base = Path(tempfile.mkdtemp(prefix=f"kura-bench-{name}-"))
    os.chmod(base, 0o755)  # noqa: S103 (the postgres user must reach its cluster)
    app = LocalAppliance(
        base / "state",
        port=free_port(),
        pg_port=free_port(),
        appliance=f"kura-bench-{name}",
    )
    try:
        app.start()
        yield app
    finally:
        app.stop()
        shutil.rmtree(base, ignore_errors=True)
        if not app.cluster.base.is_relative_to(base):
            shutil.rmtree(app.cluster.base, ignore_errors=True)


def _new_password() -> str:
    return "Bench-" + secrets.token_urlsafe(12) + "-Kura!2026"


async def _activate(vault: VaultClient, username: str, password: str) -> str:
    """Sign in with a one-time password and do what a new user must: change it,
    enrol TOTP if the policy asks. Returns the session token."""
    token = str((await vault.call("login", {"username": username, "password": password}))["token"])
    changed = await vault.call(
        "change_password", {"current_password": password, "new_password": _new_password()}, token
    )
    if changed["mfa_setup_required"]:
        begin = await vault.call("totp_begin", {}, token)
        code = pyotp.TOTP(begin["secret"]).now()
        await vault.call("totp_confirm", {"code": code}, token)
    return token


async def sign_in_mu(app: LocalAppliance, username: str = "bench-mu") -> str:
    """Bootstrap the first DA, have it create an MU, and return the MU's token."""
    vault = VaultClient(app.socket, 1)
    try:
        first = await vault.call("bootstrap_da", {"username": "admin"}, None, "local")
        admin = await _activate(vault, "admin", first["password"])
        created = await vault.call("user.create", {"username": username, "role": "MU"}, admin)
        return await _activate(vault, username, created["password"])
    finally:
        await vault.close()


def tls_context(app: LocalAppliance) -> ssl.SSLContext:
    """Verify the console with its own certificate, as an integration would."""
    return ssl.create_default_context(cafile=str(app.cert))


# --- figures ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned (pastes into Markdown as a code block)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu})"


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User plus system CPU time of one process (0 if it has gone), and with
    ``reaped`` that of its children that have exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU time spent by each part while a benchmark runs: this client, kura-console,
    kura-vault and PostgreSQL (the postmaster and its backends, including those
    that exited, which the postmaster has reaped)."""

    def __init__(self, app: LocalAppliance) -> None:
        self.app = app
        self.before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        postmaster = self.app.cluster.postmaster_pid()
        return {
            "client": _cpu_seconds(os.getpid()),
            "console": _cpu_seconds(self.app.procs["console"].pid),
            "vault": _cpu_seconds(self.app.procs["vault"].pid),
            "postgres": _cpu_seconds(postmaster, reaped=True)
            + sum(_cpu_seconds(p) for p in _children(postmaster)),
        }

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> dict[str, float]:
        time.sleep(0.2)  # a backend that just exited is reaped by the postmaster
        after = self._sample()
        return {k: after[k] - self.before[k] for k in after}


def cpu_line(used: dict[str, float], count: int, unit: str) -> str:
    """CPU milliseconds per ``unit`` for each part, e.g. for the notes under a table."""
    parts = ", ".join(f"{k} {v * 1000 / count:.3f}" for k, v in used.items())
    return f"CPU ms per {unit}: {parts} (total {sum(used.values()) * 1000 / count:.3f})"


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class Check:
    """A target from the issue, and whether a figure met it."""

    what: str
    target: str
    figure: str
    met: bool

    def row(self) -> tuple[str, str, str, str]:
        return (self.what, self.target, self.figure, "yes" if self.met else "NO")


def print_checks(checks: Sequence[Check]) -> None:
    print()
    print(table(("target", "wanted", "measured", "met"), [c.row() for c in checks]))
