"""``kura-firstboot``: the first-boot wizard's command line.

kura-firstboot auto         unattended, if an answers file is found
                            (kura-firstboot-auto.service)
kura-firstboot tty          the wizard, then the status screen, on this terminal
                            (kura-tty@.service)
kura-firstboot --root DIR   act on DIR instead of / and print the commands
                            instead of running them (tests)

Exit status: 0 done, or nothing to do (no answers file, or a bad one: the
terminals take over); 1 a step failed (the message says which); 2 wrong use.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from kura.core.errors import KuraError
from kura_firstboot import answers, status
from kura_firstboot.errors import AnswersError, FirstbootError, InputClosed
from kura_firstboot.journal import STAMP_FILE, Journal
from kura_firstboot.messages import Lang, both
from kura_firstboot.system import System, dry_runner, real_runner
from kura_firstboot.terminal import Terminal
from kura_firstboot.wizard import Timeouts, Wizard

LOCK_FILE = "/run/kura-firstboot.lock"


class SetupLock:
    """One wizard at a time across the terminals (and the unattended run).
    The holder writes its terminal's name into the lock file for the others."""

    def __init__(self, system: System, holder: str) -> None:
        self.path = system.path(LOCK_FILE)
        self.holder = holder
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, self.holder.encode())
        self._fd = fd
        return True

    def current_holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except FileNotFoundError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @contextmanager
    def held(self, term: Terminal, system: System) -> Iterator[None]:
        """Wait (saying where setup runs) until the lock is ours."""
        told = False
        while not self.try_acquire():
            if not told:
                term.say("setup.busy", where=self.current_holder())
                told = True
            system.sleep(1.0)
        try:
            yield
        finally:
            self.release()


def run_auto(
    system: System,
    credentials_dir: Path | None,
    out: TextIO,
    secret_out: TextIO,
    usb_wait: float = 3.0,
) -> int:
    """Unattended: every step from the answers file, progress on ``out``,
    shares on ``secret_out`` only (the console device, never the journal)."""
    term = Terminal(None, out, "en", secret_out)
    if system.exists(STAMP_FILE):
        term.say("auto.already")
        return 0
    try:
        found = answers.find(system, credentials_dir, usb_wait)
        if found is None:
            term.say_both("auto.none")
            return 0
        where, body = found
        term.say("auto.found", where=where)
        given = answers.parse(body)
    except AnswersError as exc:
        _bad_answers(term, exc)
        return 0
    except (OSError, UnicodeDecodeError, KuraError) as exc:
        _bad_answers(term, AnswersError("(file)", str(exc), str(exc)))
        return 0
    term.lang = "ja" if given.language == "ja" else "en"
    lock = SetupLock(system, "unattended")
    if not lock.try_acquire():
        term.say_both("setup.busy", where=lock.current_holder())
        return 0
    try:
        Wizard(system, term, Journal.load(system), given).run()
    except (FirstbootError, KuraError) as exc:
        en, ja = _messages(exc)
        term.error(en, ja)
        term.say_both("auto.failed")
        return 1
    finally:
        lock.release()
    term.say("auto.done")
    return 0


def _bad_answers(term: Terminal, exc: AnswersError) -> None:
    ja_reason = exc.ja.split(": ", 1)[-1]
    en_reason = exc.en.split(": ", 1)[-1]
    ja, _ = both("answers.bad", field=exc.field, reason=ja_reason)
    _, en = both("answers.bad", field=exc.field, reason=en_reason)
    term.line("answers.bad", ja)
    term.line("answers.bad", en)
    term.say_both("answers.fallback")


def run_tty(
    system: System,
    infd: int,
    out: TextIO,
    term_type: str,
    tty_name: str,
    timeouts: Timeouts | None = None,
) -> int:
    """The wizard until set-up is done, then the status screen; returns when
    the terminal closes (systemd starts it again: Restart=always)."""
    on_vt = term_type == "linux"
    term = Terminal(infd, out, "en" if on_vt else "ja")
    try:
        if on_vt:
            term.say("language.vt")
        if not system.exists(STAMP_FILE):
            # Once set up, the status screen comes at once (the menu changes language).
            term.lang = choose_language(term, "en" if on_vt else "ja")
        while not system.exists(STAMP_FILE):
            with SetupLock(system, tty_name).held(term, system):
                if system.exists(STAMP_FILE):
                    break
                try:
                    Wizard(
                        system, term, Journal.load(system), timeouts=timeouts or Timeouts()
                    ).run()
                except (FirstbootError, KuraError) as exc:
                    en, ja = _messages(exc)
                    term.error(en, ja)
                    term.say("setup.failed")
                    term.ask("setup.retry")
        status.screen(system, term)
    except InputClosed:
        return 0
    return 0


def choose_language(term: Terminal, default: Lang) -> Lang:
    chosen = term.choose("language", [("ja", "language.ja"), ("en", "language.en")], default)
    return "ja" if chosen == "ja" else "en"


def _messages(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, FirstbootError):
        return exc.en, exc.ja
    assert isinstance(exc, KuraError)
    return exc.message_en, exc.message_ja


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kura-firstboot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", help="act on this folder as / (tests); commands are not run")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("auto", help="unattended set-up from an answers file, if one is found")
    sub.add_parser("tty", help="the wizard and the status screen on this terminal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    system = System(
        Path(args.root) if args.root else Path("/"),
        runner=dry_runner if args.root else real_runner,
    )
    if not args.root and not system.is_appliance:
        ja, en = both("not_appliance")
        print(f"kura-firstboot: {ja}\nkura-firstboot: {en}", file=sys.stderr)
        return 2
    env = os.environ
    try:
        if args.command == "auto":
            creds = env.get("CREDENTIALS_DIRECTORY")
            with _console(args.root) as console:
                return run_auto(system, Path(creds) if creds else None, sys.stdout, console)
        try:
            tty_name = os.ttyname(0).removeprefix("/dev/")
        except OSError:
            tty_name = "stdin"
        return run_tty(system, 0, sys.stdout, env.get("TERM", ""), tty_name)
    except KeyboardInterrupt:
        return 130


@contextmanager
def _console(testing: str | None) -> Iterator[TextIO]:
    """Where shares go in unattended mode: the console device, which the
    journal does not record (stdout is journal+console)."""
    if testing:
        yield sys.stderr
        return
    # No fallback to stderr: that is the journal, where no share may go.
    with open("/dev/console", "w", encoding="utf-8") as stream:
        yield stream


if __name__ == "__main__":
    sys.exit(main())
