"""The console's way to the vault: a small pool of Unix-socket connections,
one request at a time on each, newline-delimited JSON (see kura.vault.server)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from pathlib import Path
from typing import Any

from kura.core import jsonbounds
from kura.core.errors import KuraError, Unavailable

MAX_LINE = 64 << 20


class VaultError(KuraError):
    """An error the vault answered with; carries the vault's code and status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(
            str(body.get("message_en", "")),
            str(body.get("message", "")),
            **(body.get("detail") or {}),
        )
        self.vault_status = status
        self.vault_code = str(body.get("code", "internal"))

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        body["code"] = self.vault_code
        return body

    @property
    def http_status(self) -> int:
        return self.vault_status


class VaultClient:
    def __init__(self, socket_path: Path, size: int = 16) -> None:
        self.path = socket_path
        self.size = size
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._slots = asyncio.Semaphore(size)
        self._ids = itertools.count(1)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
        except OSError as exc:
            raise Unavailable("the vault is not reachable", "保管庫に接続できません。") from exc

    async def _checkout(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle connection that the vault has not closed (after a vault restart
        the old ones have seen EOF), or a new one."""
        while not self._idle.empty():
            reader, writer = self._idle.get_nowait()
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            return reader, writer
        return await self._connect()

    async def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        session: str | None = None,
        client: str = "",
        terminal: str = "",
    ) -> dict[str, Any]:
        request = {"id": next(self._ids), "op": op, "args": args or {}, "client": client}
        if session:
            request["session"] = session
        if terminal:  # the browser's verified client-certificate serial (clientcert)
            request["terminal"] = terminal
        try:
            line = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        except UnicodeEncodeError:
            # A lone surrogate from a form or a query: a 400 naming the field,
            # like the vault's own check, not an encoding error and a 500.
            jsonbounds.check_text(args)
            raise
        async with self._slots:
            for attempt in range(2):
                conn = await self._checkout()
                reader, writer = conn
                try:
                    writer.write(line)
                    await writer.drain()
                    answer = await reader.readline()
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    answer = b""
                if not answer:
                    writer.close()
                    if attempt == 0 and op in _SAFE_TO_RETRY:
                        continue
                    raise Unavailable(
                        "the vault closed the connection", "保管庫との接続が切れました。"
                    )
                self._idle.put_nowait(conn)
                reply = json.loads(answer)
                if reply.get("ok"):
                    return dict(reply["result"])
                raise VaultError(int(reply.get("status", 500)), reply.get("error") or {})
        raise Unavailable()

    async def close(self) -> None:
        while not self._idle.empty():
            _, writer = self._idle.get_nowait()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# Reads may be sent again on a fresh connection after the vault restarted;
# writes may not (the first attempt may have committed).
_SAFE_TO_RETRY = frozenset(
    {
        "status",
        "whoami",
        "purposes",
        "subject.get",
        "subject.list",
        "policy.get",
        "user.list",
        "audit.list",
        # kura-policy's reads (kura.policy.server)
        "agents.ca",
        "agents.check",
        "agents.bundle",
        "agents.watch",
    }
)
