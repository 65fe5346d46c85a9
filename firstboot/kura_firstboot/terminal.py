"""Line-based prompts with machine-readable tags, for a VT, a serial line or a
test driving either.

Every line the wizard prints starts with ``[tag]`` (the message id from
:mod:`kura_firstboot.messages`), and a prompt ends without a newline, so a
program reading the serial console waits for ``[network.mode]`` and answers
with one line. Input is read from the raw file descriptor, not a buffered
file, so that a timeout (the network's confirm-or-revert) is exact.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from kura_firstboot.errors import InputClosed, InputTimeout
from kura_firstboot.messages import Lang, both, text

YES = frozenset({"y", "yes", "はい", "1"})


class Terminal:
    def __init__(
        self,
        infd: int | None,
        out: TextIO,
        lang: Lang = "en",
        secret_out: TextIO | None = None,
    ) -> None:
        self.infd = infd  # None: unattended, nothing may be asked
        self.out = out
        self.lang: Lang = lang
        self.secret_out = secret_out or out
        self._pending = b""

    @property
    def interactive(self) -> bool:
        return self.infd is not None

    # --- output ---------------------------------------------------------------

    def line(self, tag: str, body: str, *, to: TextIO | None = None) -> None:
        stream = to or self.out
        first, *rest = body.split("\n") or [""]
        stream.write(f"[{tag}] {first}\n")
        for more in rest:
            stream.write(f"[{tag}] {more}\n")
        stream.flush()

    def say(self, msg_id: str, **values: object) -> None:
        self.line(msg_id, text(msg_id, self.lang, **values))

    def say_both(self, msg_id: str, **values: object) -> None:
        """Japanese and English, whatever the chosen language (errors, reverts)."""
        ja, en = both(msg_id, **values)
        self.line(msg_id, ja)
        self.line(msg_id, en)

    def error(self, en: str, ja: str) -> None:
        self.line("error", ja)
        self.line("error", en)

    def problem(self, en: str, ja: str) -> None:
        """A value was refused: one line in the chosen language, then the prompt again."""
        self.line("retry", ja if self.lang == "ja" else en)

    def secret(self, tag: str, body: str) -> None:
        """A share: to the secret stream only (the terminal, never the journal)."""
        self.line(tag, body, to=self.secret_out)

    def write_newline(self) -> None:
        """End a prompt line nobody answered."""
        self.out.write("\n")
        self.out.flush()

    def clear(self) -> None:
        """Wipe a share from the screen once it was written down (terminals only)."""
        if self.secret_out.isatty():
            self.secret_out.write("\033[H\033[2J\033[3J")
            self.secret_out.flush()

    # --- input ----------------------------------------------------------------

    def ask(
        self,
        msg_id: str,
        default: str | None = None,
        *,
        secret: bool = False,
        timeout: float | None = None,
        choices: str = "",
        **values: object,
    ) -> str:
        return self._ask(msg_id, default, secret, timeout, choices, values)

    def _ask(
        self,
        msg_id: str,
        default: str | None,
        secret: bool,
        timeout: float | None,
        choices: str,
        values: dict[str, object],
    ) -> str:
        prompt = f"[{msg_id}] {text(msg_id, self.lang, **values)}"
        if choices:
            prompt += f" ({choices})"
        if default:
            prompt += f" [{default}]"
        # Echo goes off before the prompt shows: whoever answers as soon as it
        # appears (a person typing ahead, a program on the serial line) must
        # not see the password echoed.
        with self._no_echo(secret):
            self.out.write(prompt + ": ")
            self.out.flush()
            answer = self.read_line(timeout)
        if secret:
            self.out.write("\n")
            self.out.flush()
        return answer.strip() or (default or "")

    def choose(
        self,
        msg_id: str,
        options: Sequence[tuple[str, str]],
        default: str | None = None,
        *,
        timeout: float | None = None,
        **values: object,
    ) -> str:
        """One of ``options`` ((value, label message id) pairs): by number or by value."""
        labels = ", ".join(
            f"{i}: {text(label, self.lang)}" for i, (_, label) in enumerate(options, 1)
        )
        default_number = next(
            (str(i) for i, (value, _) in enumerate(options, 1) if value == default), None
        )
        while True:
            answer = self._ask(msg_id, default_number, False, timeout, labels, values)
            for i, (value, _) in enumerate(options, 1):
                if answer.lower() in (str(i), value.lower()):
                    return value
            self.say("choice.invalid", count=len(options))

    def confirm(self, msg_id: str, *, timeout: float | None = None, **values: object) -> bool:
        return self._ask(msg_id, None, False, timeout, "", values).lower() in YES

    def read_line(self, timeout: float | None = None) -> str:
        if self.infd is None:
            raise InputClosed("unattended: nothing can be asked")
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.infd], [], [], wait)
            if not ready:
                raise InputTimeout()
            chunk = os.read(self.infd, 4096)
            if not chunk:
                if self._pending:
                    break
                raise InputClosed()
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    @contextlib.contextmanager
    def _no_echo(self, secret: bool) -> Iterator[None]:
        if not secret or self.infd is None or not os.isatty(self.infd):
            yield
            return
        old = termios.tcgetattr(self.infd)
        new = list(old)
        new[3] = new[3] & ~termios.ECHO
        # TCSANOW, not TCSAFLUSH: flushing would throw away what was typed ahead.
        termios.tcsetattr(self.infd, termios.TCSANOW, new)
        try:
            yield
        finally:
            termios.tcsetattr(self.infd, termios.TCSANOW, old)
