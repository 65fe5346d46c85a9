#!/usr/bin/env python3
"""Boot the Kura image in QEMU, the way the image tests and `./build.sh run` do.

Theory of operation
-------------------
A `VM` owns one state folder and never touches the image it was given:

    <state>/disk.qcow2     overlay whose backing file is the built image (-F qcow2)
    <state>/OVMF_VARS.fd   the firmware's own copy of its variable store
    <state>/tpm/           swtpm's state: the TPM that the vault's root key is sealed to
    <state>/serial.log     everything the guest wrote on its serial port (raw, with ANSI codes)
    <state>/qemu.log       what qemu and swtpm said on stderr

All four survive `shutdown()` / `kill()`, so a later `start()` on the same VM (or a new VM
on the same state folder) is the same machine powered on again: same disk, same EFI
variables, same TPM. Sockets live in a short private folder under /tmp, because a Unix
socket path must fit in 108 bytes and pytest's tmp_path often does not.

Each `start()` runs two processes: swtpm (with --terminate, so it ends when qemu lets go
of it) and qemu. Both are started through `setpriv --pdeathsig KILL`, so the kernel kills
them if the Python process that started them dies without cleaning up; `close()`, the
context manager and an atexit hook stop them in the ordinary case.

The serial port is qemu's stdin/stdout (`-serial stdio`). A reader thread copies every
byte to serial.log and keeps an ANSI-stripped text copy that `expect()` searches. Control
goes over QMP (a Unix socket): `system_powerdown` for an ACPI shutdown, `quit`, queries.

This file runs with /usr/bin/python3 on a bare host: it uses the standard library only.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import codecs
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"
SWTPM = "swtpm"
QEMU_IMG = "qemu-img"

# What a ConsoleTimeout shows of the serial output.
TAIL_BYTES = 2048

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-character escapes (ESC c).
_ANSI = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_()][0-9A-Za-z]?)")
# systemd's credential names are file names; qemu's option parser also needs no commas.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,200}")


class VMError(Exception):
    """Something went wrong starting, driving or stopping a VM."""


class ConsoleTimeout(VMError):
    """What `expect()` waited for did not appear on the serial console in time."""


class QMPError(VMError):
    """qemu's QMP monitor refused a command or could not be reached."""


def die(message: str, hint: str | None = None) -> NoReturn:
    """Print one clear line (and a hint) for the user and exit non-zero."""
    print(f"vm.py: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    raise SystemExit(1)


def run(argv: Sequence[str], *, timeout: float = 60) -> str:
    """Run a short helper (qemu-img) to completion; its stdout, or VMError with its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError as e:
        raise VMError(f"{argv[0]} is not installed (apt-get install qemu-utils)") from e
    except subprocess.TimeoutExpired as e:
        raise VMError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from e
    if done.returncode != 0:
        raise VMError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _with_pdeathsig(argv: list[str]) -> list[str]:
    """Make the kernel kill the child if we die: no orphaned qemu or swtpm.

    setpriv (util-linux, always on Debian) sets PR_SET_PDEATHSIG and execs; doing it in a
    preexec_fn instead is unsafe once the console reader threads exist.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def private_file(path: Path) -> Path:
    """`path`, created if missing, readable and writable by its owner only (also when an
    older run left it readable by others); its contents are kept."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def smbios_credential(name: str, value: bytes, handle: int = 0x4B00) -> bytes:
    """An SMBIOS type 11 (OEM strings) structure holding the systemd credential `name`,
    as `-smbios type=11,value=io.systemd.credential.binary:NAME=BASE64` would make it:
    the 5-byte header (type, length, handle, string count), the string, and the two NULs
    that end a structure's strings. systemd reads it from /sys/firmware/dmi/entries."""
    text = f"io.systemd.credential.binary:{name}={base64.b64encode(value).decode()}"
    return bytes([11, 5]) + handle.to_bytes(2, "little") + bytes([1]) + text.encode() + b"\0\0"


def strip_ansi(text: str) -> str:
    """The text without terminal escape sequences and carriage returns."""
    return _ANSI.sub("", text).replace("\r", "")


# -- KVM --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KvmProbe:
    """The outcome of `probe_kvm()`: whether KVM can run our guests, why, and how long it took."""

    works: bool
    reason: str
    seconds: float


KVM_PROBE_TIMEOUT = 12.0


@functools.cache
def probe_kvm() -> KvmProbe:
    """Check that qemu can really run a guest under KVM here (cached per process).

    /dev/kvm existing is not enough: in nested or restricted hosts qemu aborts at start
    ("failed to set MSR 0x10a"), or stops on "KVM internal error" in the firmware's first
    instructions. So boot OVMF with no disk under exactly the `-accel kvm -cpu host` that
    `VM` uses, and call KVM usable only when the firmware reaches its boot manager
    (it prints "BdsDxe" on the serial port, ~1-2 s under KVM) within KVM_PROBE_TIMEOUT.
    This cannot prove that a Linux kernel will run too; KURA_VM_ACCEL=tcg forces emulation.
    """
    started = time.monotonic()

    def outcome(works: bool, reason: str) -> KvmProbe:
        return KvmProbe(works, reason, round(time.monotonic() - started, 2))

    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return outcome(False, "/dev/kvm is missing or not accessible")
    if shutil.which(QEMU) is None:
        return outcome(False, f"{QEMU} is not installed")
    with tempfile.TemporaryDirectory(prefix="kura-kvm-probe-") as tmp:
        variables = Path(tmp) / "vars.fd"
        shutil.copyfile(OVMF_VARS, variables)
        argv = [QEMU, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256",
                "-display", "none", "-monitor", "none", "-serial", "stdio", "-net", "none",
                "-no-reboot",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        proc = subprocess.Popen(_with_pdeathsig(argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        seen = bytearray()
        reader = threading.Thread(target=_drain, args=(proc.stdout, seen), daemon=True)
        reader.start()
        try:
            while time.monotonic() - started < KVM_PROBE_TIMEOUT:
                if b"BdsDxe" in seen:
                    return outcome(True, "OVMF reached its boot manager under KVM")
                if b"KVM internal error" in seen:
                    return outcome(False, "KVM internal error in the firmware")
                if proc.poll() is not None:
                    reader.join(2)
                    last = bytes(seen).decode(errors="replace").strip().splitlines()
                    why = last[0] if last else f"exit code {proc.returncode}"
                    return outcome(False, f"qemu stopped under KVM: {why}")
                time.sleep(0.05)
            return outcome(False, f"OVMF printed nothing within {KVM_PROBE_TIMEOUT:.0f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(2)


def _drain(stream: IO[bytes], into: bytearray) -> None:
    for chunk in iter(lambda: stream.read1(4096), b""):  # type: ignore[attr-defined]
        into.extend(chunk)


def _image_identity(image: Path, stamp: Path) -> dict[str, Any]:
    """The image's SHA-256, hashed again only when its size, mtime or inode changed."""
    st = image.stat()
    key = [st.st_size, st.st_mtime_ns, st.st_ino]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known: dict[str, Any] = json.loads(stamp.read_text())
        if known["stat"] == key and isinstance(known["sha256"], str):
            return known
    digest = hashlib.sha256()
    with image.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"stat": key, "sha256": digest.hexdigest()}


def kvm_works() -> bool:
    """True when guests can run under KVM here (see `probe_kvm`); cached per process."""
    return probe_kvm().works


# -- serial console -----------------------------------------------------------------------------

class SerialConsole:
    """Reads the guest's serial output in a thread; `expect()` searches it, `send()` types.

    The text that `expect()` sees is cumulative over every boot of the VM, with a cursor
    (like pexpect): a match moves the cursor past it, so the next `expect()` only sees
    what came after.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._joined = ""
        self._cursor = 0
        self._pending = ""
        self._cond = threading.Condition()
        self._eof = True
        self._thread: threading.Thread | None = None
        self._input: IO[bytes] | None = None

    def attach(self, output: IO[bytes], input_: IO[bytes]) -> None:
        """Start reading a new qemu process's serial output."""
        with self._cond:
            self._eof = False
        self._input = input_
        self._thread = threading.Thread(target=self._read, args=(output,),
                                        name="kura-vm-serial", daemon=True)
        self._thread.start()

    def detach(self, timeout: float = 10) -> None:
        """Wait for the reader to see the end of the output (qemu has exited)."""
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._input is not None:
            with contextlib.suppress(OSError):
                self._input.close()
            self._input = None

    def _read(self, output: IO[bytes]) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with self.log_path.open("ab") as log:
            while True:
                try:
                    chunk: bytes = output.read1(65536)  # type: ignore[attr-defined]
                except (OSError, ValueError):
                    chunk = b""
                if chunk:
                    log.write(chunk)
                    log.flush()
                self._feed(decoder.decode(chunk, final=not chunk))
                if not chunk:
                    with self._cond:
                        self._eof = True
                        self._cond.notify_all()
                    return

    def _feed(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        # Hold back an escape sequence cut in half by the read, so it is stripped whole.
        cut = text.rfind("\x1b")
        if cut != -1 and len(text) - cut < 32 and not _ANSI.match(text, cut):
            text, self._pending = text[:cut], text[cut:]
        clean = strip_ansi(text)
        if clean:
            with self._cond:
                self._joined += clean
                self._cond.notify_all()

    @property
    def text(self) -> str:
        """Everything seen so far, escape sequences removed."""
        with self._cond:
            return self._joined

    def tail(self, size: int = TAIL_BYTES) -> str:
        """The last `size` characters seen."""
        return self.text[-size:]

    def expect(self, pattern: str | re.Pattern[str], timeout: float,
               describe_exit: Callable[[], str] | None = None) -> re.Match[str]:
        """Wait until `pattern` (re.MULTILINE) matches output after the cursor.

        Raises ConsoleTimeout (with the last 2 KB of output) on timeout or when the
        output ends (qemu exited) without a match.
        """
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = regex.search(self._joined, self._cursor)
                if found:
                    self._cursor = found.end()
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    stopped = describe_exit() if describe_exit else "qemu exited"
                    why = f"the guest stopped ({stopped})" if self._eof else \
                        f"not within {timeout:g} s"
                    raise ConsoleTimeout(
                        f"serial console: no match for /{regex.pattern}/: {why}; "
                        f"log {self.log_path}; last {TAIL_BYTES} characters:\n"
                        f"{self._joined[-TAIL_BYTES:]}")
                self._cond.wait(min(left, 1.0))

    def send(self, data: bytes) -> None:
        """Write bytes to the guest's serial port."""
        if self._input is None:
            raise VMError("the VM is not running: nothing to type into")
        try:
            self._input.write(data)
            self._input.flush()
        except (BrokenPipeError, ValueError) as e:
            raise VMError("the serial port is closed: qemu has exited") from e


# -- QMP ----------------------------------------------------------------------------------------

class QMP:
    """A minimal client for qemu's machine protocol over a Unix socket (one command at a time)."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rwb")
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        try:
            greeting = self._receive()
            if "QMP" not in greeting:
                raise QMPError(f"not a QMP greeting: {greeting}")
            self.execute("qmp_capabilities")
        except QMPError:
            self.close()
            raise

    def _receive(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except OSError as e:
            raise QMPError(f"QMP: {e}") from e
        if not line:
            raise QMPError("QMP: qemu closed the connection")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command; its "return" value, or QMPError with qemu's error."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        with self._lock:
            try:
                self._file.write(json.dumps(request).encode() + b"\n")
                self._file.flush()
            except OSError as e:
                raise QMPError(f"QMP {command}: {e}") from e
            while True:
                reply = self._receive()
                if "event" in reply:
                    self.events.append(reply)
                elif "error" in reply:
                    error = reply["error"]
                    raise QMPError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
                elif "return" in reply:
                    return reply["return"]

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command ("info tpm") and return its text."""
        text: str = self.execute("human-monitor-command", **{"command-line": command_line})
        return text

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._sock.close()


# -- the VM ------------------------------------------------------------------------------------

_live: weakref.WeakSet[VM] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for vm in list(_live):
        with contextlib.suppress(VMError, OSError):
            vm.close()


class VM:
    """One Kura appliance in QEMU: q35, OVMF, swtpm TPM 2.0, virtio disk and network.

    Use it as a context manager; `start()` boots, `expect()`/`send()` drive the serial
    console, `shutdown()` powers off through ACPI, `kill()` pulls the plug, and `start()`
    again powers the same machine on (same disk overlay, EFI variables and TPM).
    """

    def __init__(self, image: Path, state_dir: Path, *, memory_mib: int = 2048, cpus: int = 2,
                 https_port: int | None = None, guest_ports: Iterable[int] = (),
                 grow: str | None = None, usb_stick: Path | None = None,
                 accel: str | None = None, interactive: bool = False) -> None:
        """Describe the VM; nothing runs until `start()`.

        image: the built qcow2, only ever used as a read-only backing file.
        state_dir: where the overlay, EFI variables, TPM state and logs live (created).
        https_port: host port forwarded to the guest's 443 on 127.0.0.1 (default: a free one).
        guest_ports: more guest TCP ports to forward, each from a free host port (`host_port()`).
        grow: when the overlay is first made, enlarge the disk: "+2G" or an absolute "8G".
        usb_stick: a raw disk image attached as a USB mass-storage stick (KURA-SETUP).
        accel: "kvm", "tcg", or None to use KVM when `kvm_works()`.
        interactive: the serial console (and qemu's monitor, Ctrl-A C) is this terminal.
        """
        if accel not in (None, "kvm", "tcg"):
            raise VMError(f"accel must be kvm or tcg, not {accel!r}")
        self.image = Path(image).absolute()
        self.state_dir = Path(state_dir).absolute()
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.grow = grow
        self.usb_stick = Path(usb_stick).absolute() if usb_stick else None
        self.interactive = interactive
        self._accel = accel
        self.ports: dict[int, int] = {443: https_port or free_port()}
        for guest in guest_ports:
            self.ports.setdefault(guest, free_port())
        self._credentials: dict[str, bytes] = {}
        self._credential_tables: list[Path] = []
        self.console = SerialConsole(self.state_dir / "serial.log")
        self._qemu: subprocess.Popen[bytes] | None = None
        self._swtpm: subprocess.Popen[bytes] | None = None
        self._qmp: QMP | None = None
        self._runtime: Path | None = None
        self.qemu_pids: list[int] = []
        self.swtpm_pids: list[int] = []

    # -- paths and settings

    @property
    def overlay(self) -> Path:
        return self.state_dir / "disk.qcow2"

    @property
    def efi_vars(self) -> Path:
        return self.state_dir / "OVMF_VARS.fd"

    @property
    def tpm_dir(self) -> Path:
        return self.state_dir / "tpm"

    @property
    def image_stamp(self) -> Path:
        """Which image (SHA-256) the overlay was made from."""
        return self.state_dir / "image.json"

    @property
    def serial_log(self) -> Path:
        return self.state_dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.state_dir / "qemu.log"

    @property
    def accel(self) -> str:
        """"kvm" or "tcg": what this VM runs under (probing KVM the first time it is asked)."""
        if self._accel is None:
            self._accel = "kvm" if kvm_works() else "tcg"
        return self._accel

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports[443]}/"

    def host_port(self, guest_port: int) -> int:
        """The host port on 127.0.0.1 that reaches `guest_port` in the guest."""
        try:
            return self.ports[guest_port]
        except KeyError:
            raise VMError(f"guest port {guest_port} is not forwarded; pass it in "
                          "guest_ports") from None

    def credential(self, name: str, value: bytes) -> None:
        """Pass a systemd credential through SMBIOS type 11 from the next `start()` on.

        The value never appears on qemu's command line (which `ps` shows to every user
        of the host, and which qemu.log records): it goes into an SMBIOS table file,
        0600 in the private runtime folder, that qemu reads at start and that is
        deleted as soon as qemu is up (`-smbios file=PATH`)."""
        if not _CREDENTIAL_NAME.fullmatch(name):
            raise VMError(f"credential name {name!r}: use letters, digits, '_.@-'")
        self._credentials[name] = value

    @property
    def running(self) -> bool:
        return self._qemu is not None and self._qemu.poll() is None

    @property
    def qmp(self) -> QMP:
        if self._qmp is None or not self.running:
            raise VMError("the VM is not running: no QMP monitor")
        return self._qmp

    # -- life cycle

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_state(self) -> None:
        """Forget the machine: remove overlay, EFI variables and TPM state (VM must be off)."""
        if self.running:
            raise VMError("stop the VM before resetting its state")
        for path in (self.overlay, self.efi_vars, self.image_stamp):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.tpm_dir, ignore_errors=True)

    def _prepare(self) -> None:
        if not self.image.is_file():
            raise VMError(f"no disk image at {self.image}")
        if not OVMF_CODE.is_file():
            raise VMError(f"no UEFI firmware at {OVMF_CODE} (apt-get install ovmf)")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tpm_dir.mkdir(mode=0o700, exist_ok=True)
        # The serial log shows custodian shares and one-time passwords, qemu.log the
        # command lines: readable by their owner only, and appended to across starts.
        for log in (self.serial_log, self.qemu_log, self.state_dir / "swtpm.log"):
            private_file(log)
        identity = _image_identity(self.image, self.image_stamp)
        if not self.overlay.exists():
            partial = self.overlay.with_suffix(".partial")
            run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "qcow2",
                 "-b", str(self.image), str(partial)])
            if self.grow:
                run([QEMU_IMG, "resize", "-q", str(partial), self.grow])
            self.image_stamp.write_text(json.dumps(identity))
            partial.rename(self.overlay)
        else:
            # An overlay records changes to *these* bytes of the image; over a rebuilt image
            # with other bytes it is a corrupt disk. Refuse rather than boot garbage.
            try:
                made_from = json.loads(self.image_stamp.read_text())["sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                made_from = None
            if made_from != identity["sha256"]:
                raise VMError(f"{self.image} is not the image this machine's disk "
                              f"({self.overlay}) was made from; start over with --fresh "
                              "(VM.reset_state()), which forgets the machine")
            if identity != json.loads(self.image_stamp.read_text()):
                self.image_stamp.write_text(json.dumps(identity))  # same bytes, new file
        if not self.efi_vars.exists():
            shutil.copyfile(OVMF_VARS, self.efi_vars)

    def qemu_argv(self, runtime: Path) -> list[str]:
        """qemu's command line for this VM, with its sockets in `runtime`."""
        accel = self.accel
        cpu = "host" if accel == "kvm" else "max"
        forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                           for guest, host in sorted(self.ports.items()))
        argv = [
            QEMU, "-name", "kura", "-machine", "q35", "-accel", accel, "-cpu", cpu,
            "-smp", str(self.cpus), "-m", str(self.memory_mib),
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.efi_vars}",
            "-drive", f"if=none,id=disk0,format=qcow2,discard=unmap,file={self.overlay}",
            "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
            "-netdev", f"user,id=net0{forwards}",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
            "-chardev", f"socket,id=chrtpm,path={runtime / 'swtpm.sock'}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
            "-qmp", f"unix:{runtime / 'qmp.sock'},server=on,wait=off",
            "-display", "none",
        ]
        if self.interactive:
            # Ctrl-A X quits, Ctrl-A C switches to qemu's monitor; Ctrl-C goes to the guest.
            argv += ["-chardev", f"stdio,id=con0,mux=on,signal=off,logfile={self.serial_log}"
                     ",logappend=on",
                     "-serial", "chardev:con0", "-mon", "chardev=con0,mode=readline"]
        else:
            argv += ["-monitor", "none", "-serial", "stdio"]
        if self.usb_stick:
            argv += ["-drive", f"if=none,id=usbstick,format=raw,file={self.usb_stick}",
                     "-device", "qemu-xhci,id=xhci",
                     "-device", "usb-storage,bus=xhci.0,drive=usbstick,removable=on"]
        for n, (name, value) in enumerate(sorted(self._credentials.items())):
            # A file, not `-smbios type=11,value=...`: argv is world-readable.
            table = runtime / f"credential-{n}.smbios"
            with open(private_file(table), "wb") as f:
                f.write(smbios_credential(name, value, handle=0x4B00 + n))
            argv += ["-smbios", f"file={table}"]
        return argv

    def start(self) -> None:
        """Power the machine on: swtpm, then qemu, then the console reader and QMP."""
        if self.running:
            raise VMError("the VM is already running")
        self._prepare()
        self._runtime = Path(tempfile.mkdtemp(prefix="kura-vm-"))
        _live.add(self)
        try:
            self._start_swtpm(self._runtime)
            self._start_qemu(self._runtime)
        except BaseException:
            self.kill()
            raise

    def _start_swtpm(self, runtime: Path) -> None:
        sock = runtime / "swtpm.sock"
        argv = [SWTPM, "socket", "--tpm2", "--terminate",
                "--tpmstate", f"dir={self.tpm_dir}",
                "--ctrl", f"type=unixio,path={sock}",
                "--log", f"file={self.state_dir / 'swtpm.log'},level=1"]
        with self.qemu_log.open("ab") as err:
            try:
                self._swtpm = subprocess.Popen(_with_pdeathsig(argv), stdin=subprocess.DEVNULL,
                                               stdout=err, stderr=err)
            except FileNotFoundError as e:
                raise VMError("swtpm is not installed (apt-get install swtpm)") from e
        self.swtpm_pids.append(self._swtpm.pid)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if self._swtpm.poll() is not None:
                raise VMError(f"swtpm exited with code {self._swtpm.returncode}; "
                              f"see {self.qemu_log}")
            if time.monotonic() > deadline:
                raise VMError(f"swtpm did not open {sock} within 10 s")
            time.sleep(0.02)

    def _start_qemu(self, runtime: Path) -> None:
        argv = self.qemu_argv(runtime)
        with self.qemu_log.open("ab") as err:
            err.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            err.flush()
            pipe = None if self.interactive else subprocess.PIPE
            try:
                self._qemu = subprocess.Popen(_with_pdeathsig(argv), stdin=pipe, stdout=pipe,
                                              stderr=err)
            except FileNotFoundError as e:
                raise VMError(f"{QEMU} is not installed (apt-get install qemu-system-x86)") from e
        self.qemu_pids.append(self._qemu.pid)
        # qemu read the credential tables while parsing its options; once its QMP
        # socket answers (below) they are removed, so no copy of a secret stays.
        self._credential_tables = sorted(runtime.glob("credential-*.smbios"))
        if not self.interactive:
            assert self._qemu.stdout is not None and self._qemu.stdin is not None
            self.console.attach(self._qemu.stdout, self._qemu.stdin)
        sock = runtime / "qmp.sock"
        deadline = time.monotonic() + 15
        while True:
            if self._qemu.poll() is not None:
                raise VMError(f"qemu exited with code {self._qemu.returncode} at start: "
                              f"{self._last_error()}")
            try:
                self._qmp = QMP(sock)
                for table in self._credential_tables:
                    table.unlink(missing_ok=True)
                return
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() > deadline:
                    raise VMError(f"qemu's QMP socket {sock} did not answer within 15 s") from e
                time.sleep(0.05)
            except (QMPError, OSError) as e:
                raise VMError(f"qemu's QMP socket {sock}: {e}") from e

    def _last_error(self) -> str:
        try:
            lines = self.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"see {self.qemu_log}"
        return f"{lines[-1] if lines else '(no message)'} (see {self.qemu_log})"

    def _describe_exit(self) -> str:
        if self._qemu is None:
            return "not started"
        code = self._qemu.poll()
        return "still running" if code is None else f"qemu exited with code {code}"

    # -- driving it

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        """Wait for `pattern` on the serial console; the match, or ConsoleTimeout."""
        return self.console.expect(pattern, timeout, describe_exit=self._describe_exit)

    def send(self, line: str, end: str = "\r") -> None:
        """Type `line` and Enter (a carriage return, as a terminal sends) on the serial port."""
        self.console.send((line + end).encode())

    def reset(self) -> None:
        """Press the reset button (QMP system_reset): not a clean shutdown."""
        self.qmp.execute("system_reset")

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for qemu to exit (the guest powered off); its exit code, None on timeout."""
        if self._qemu is None:
            return None
        try:
            code = self._qemu.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._cleanup()
        return code

    def shutdown(self, timeout: float = 90) -> bool:
        """ACPI power button, then wait for the guest to power off.

        True when it did within `timeout`; otherwise qemu is told to quit (then killed)
        and the result is False.
        """
        if not self.running:
            self._cleanup()
            return False
        with contextlib.suppress(QMPError):
            self.qmp.execute("system_powerdown")
        if self.wait(timeout) is not None:
            return True
        self.close()
        return False

    def kill(self) -> None:
        """Pull the plug: SIGKILL qemu (the guest gets no chance to flush anything)."""
        if self._qemu is not None and self._qemu.poll() is None:
            self._qemu.kill()
        self._cleanup()

    def close(self) -> None:
        """Stop everything now (QMP quit, then SIGKILL); state files stay. Idempotent."""
        if self.running and self._qmp is not None:
            with contextlib.suppress(QMPError):
                self._qmp.execute("quit")
            assert self._qemu is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._qemu.wait(10)
        self.kill()

    def _cleanup(self) -> None:
        """Reap qemu, close the console and QMP, stop swtpm, remove the sockets."""
        if self._qemu is not None:
            if self._qemu.poll() is None:
                self._qemu.kill()
            self._qemu.wait()
            self._qemu = None
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        self.console.detach()
        if self._swtpm is not None:
            # --terminate makes swtpm leave when qemu lets go; wait briefly, then make sure.
            try:
                self._swtpm.wait(5)
            except subprocess.TimeoutExpired:
                self._swtpm.terminate()
                try:
                    self._swtpm.wait(5)
                except subprocess.TimeoutExpired:
                    self._swtpm.kill()
                    self._swtpm.wait()
            self._swtpm = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
        _live.discard(self)


# -- ./build.sh run ------------------------------------------------------------------------------

def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vm.py", description="Boot the Kura image in QEMU.")
    commands = parser.add_subparsers(dest="command", required=True)
    boot = commands.add_parser("run", help="boot the image with the serial console on this "
                                           "terminal (Ctrl-A X quits, Ctrl-A C: qemu monitor)")
    boot.add_argument("--image", type=Path, default=Path("out/kura.qcow2"),
                      help="the built image (default out/kura.qcow2); never modified")
    boot.add_argument("--state", type=Path, default=Path("state/vm"),
                      help="overlay, EFI variables, TPM and logs, kept across runs "
                           "(default state/vm)")
    boot.add_argument("--port", type=int, default=8443,
                      help="host port for the console's HTTPS (default 8443)")
    boot.add_argument("--memory", type=int, default=2048, help="MiB of RAM (default 2048)")
    boot.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    boot.add_argument("--grow", default="+2G",
                      help="enlarge a new overlay by this much (default +2G)")
    boot.add_argument("--setup", type=Path,
                      help="answers file passed as the systemd credential kura.setup")
    boot.add_argument("--usb", type=Path, help="raw image attached as a USB stick")
    boot.add_argument("--accel", choices=("kvm", "tcg"),
                      default=os.environ.get("KURA_VM_ACCEL") or None,
                      help="force an accelerator (default: KVM when it works, else TCG; "
                           "env KURA_VM_ACCEL)")
    boot.add_argument("--fresh", action="store_true",
                      help="forget the previous machine: new overlay, EFI variables and TPM")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if not args.image.is_file():
        die(f"no image at {args.image}", "build it first: ./build.sh image")
    vm = VM(args.image, args.state, memory_mib=args.memory, cpus=args.cpus,
            https_port=args.port, grow=args.grow, usb_stick=args.usb, accel=args.accel,
            interactive=True)
    if args.setup is not None:
        try:
            vm.credential("kura.setup", args.setup.read_bytes())
        except OSError as e:
            die(f"cannot read the answers file: {e}")
    if args.fresh:
        vm.reset_state()
    accel = vm.accel
    why = "" if args.accel else f" ({probe_kvm().reason})"
    print(f"Kura VM: {args.image} with state in {vm.state_dir}")
    print(f"  accelerator: {accel}{why}")
    print(f"  console:     {vm.url}")
    print(f"  serial log:  {vm.serial_log}")
    print("  Ctrl-A X quits at once; Ctrl-A C opens qemu's monitor (system_powerdown).")
    sys.stdout.flush()
    # qemu puts a terminal in raw mode, so Ctrl-C reaches the guest, not us. Without a
    # terminal, Ctrl-C interrupts us and `finally` still stops qemu and swtpm.
    try:
        vm.start()
        code = vm.wait()
    except VMError as e:
        vm.close()
        die(str(e))
    finally:
        vm.close()
    print(f"Kura VM: qemu exited ({code}); swtpm stopped. The machine's state is kept in "
          f"{vm.state_dir} (--fresh starts over).")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
