"""The one way Kura runs another program: argv lists only (never a shell),
secrets through standard input only (never argv), failures as one clear error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kura.core.errors import CommandFailed


def as_user(user: str | None) -> list[str]:
    """The argv prefix that runs a command as ``user`` when we are root."""
    if user and os.geteuid() == 0:
        return ["runuser", "-u", user, "--"]
    return []


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    """Run ``argv`` to completion and return its standard output.

    Standard error is included in the failure message, so never send a secret
    to a program that may echo it there."""
    full = [*as_user(user), *map(str, argv)]
    try:
        done = subprocess.run(full, input=input, capture_output=True, cwd=cwd, env=env, check=False)
    except FileNotFoundError as exc:
        raise CommandFailed(f"{full[0]} is not installed", f"{full[0]} がありません。") from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip()[-600:]
        raise CommandFailed(
            f"{Path(str(argv[0])).name} exited with {done.returncode}: {tail}",
            f"{Path(str(argv[0])).name} が失敗しました（終了コード {done.returncode}）: {tail}",
        )
    return done.stdout
