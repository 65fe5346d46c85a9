"""kura-vault's socket: newline-delimited JSON over a Unix socket.

A request is one line ``{"id": 1, "op": "subject.lookup", "session": "...",
"client": "192.0.2.1", "terminal": "3f2a…", "args": {...}}`` (``terminal``: the
browser's client-certificate serial, when it showed one); the answer is one line
``{"id": 1, "ok": true, "result": {...}}`` or ``{"id": 1, "ok": false,
"status": 403, "error": {"code": ..., "message": ..., "message_en": ...}}``.

Who may connect is checked on every connection with SO_PEERCRED: only the
uids in the configuration (the console's) and the vault's own. The socket
file is made 0660 so that the file system agrees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

from kura.core import jsonbounds, terminals
from kura.core.errors import BadRequest, KuraError
from kura.vault.service import Vault

log = logging.getLogger("kura.vault.server")

MAX_LINE = 64 << 20  # a bulk import of 100,000 rows fits


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def error_reply(request_id: Any, exc: KuraError) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "status": exc.status, "error": exc.to_json()}


class VaultServer:
    def __init__(self, vault: Vault, path: Path, allowed_uids: frozenset[int]) -> None:
        self.vault = vault
        self.path = path
        self.allowed = allowed_uids | {os.geteuid()}
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o117)
        try:
            self.server = await asyncio.start_unix_server(
                self._connection, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        if self.path.exists():
            self.path.unlink()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer)
        if uid not in self.allowed:
            log.warning("refused a connection from uid %d", uid)
            writer.close()
            return
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE
                    reply = error_reply(
                        None, BadRequest("request too large", "リクエストが大きすぎます。")
                    )
                    writer.write(_encode(reply))
                    break
                if not line:
                    break
                reply = await self.answer(line, uid)
                writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def answer(self, line: bytes, uid: int) -> dict[str, Any]:
        request_id = None
        try:
            # Bounded nesting, no lone surrogate anywhere (args, session, client).
            request = jsonbounds.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise BadRequest("the request needs an op", "操作（op）がありません。")
            request_id = request.get("id")
            token, client = request.get("session"), request.get("client", "local")
            if token is not None and not isinstance(token, str):
                raise BadRequest("session must be a string", "セッションは文字列です。")
            # The browser's verified client-certificate serial (kura-console);
            # anything but hex counts as no certificate.
            terminal = terminals.normalise_serial(str(request.get("terminal", "")))
            result = await self.vault.call(
                request["op"], request.get("args", {}), token, str(client)[:64], uid, terminal
            )
            return {"id": request_id, "ok": True, "result": result}
        except KuraError as exc:
            return error_reply(request_id, exc)
        except Exception:
            # One clear line, never the arguments (they may hold a number).
            log.exception("internal error")
            return error_reply(request_id, KuraError())


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
