"""The answers file for an unattended first boot (docs/firstboot.md).

Parsed once into a frozen :class:`Answers`; every field is checked before
anything on the machine changes, and a bad one raises :class:`AnswersError`
naming it (``network.address``), so the console can say exactly what to fix.

Where it comes from, in order (:func:`find`):

1. ``$CREDENTIALS_DIRECTORY/kura.setup`` — the unit's ``ImportCredential=``
   (QEMU: an SMBIOS type 11 string ``io.systemd.credential.binary:kura.setup=…``,
   which image/vm.py passes as a 0600 table file, never in qemu's argv);
2. ``kura-setup.toml`` on a file system labelled ``KURA-SETUP`` (a USB
   stick), mounted read-only, nosuid, nodev, noexec in a private folder.
"""

from __future__ import annotations

import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kura_firstboot import checks, ha
from kura_firstboot.errors import AnswersError, BadValue
from kura_firstboot.system import System

CREDENTIAL = "kura.setup"
USB_LABEL = "KURA-SETUP"
USB_FILE = "kura-setup.toml"

_SECTIONS: dict[str, frozenset[str]] = {
    "": frozenset({"language", "role", "network", "host", "tls", "seal", "admin", "ha",
                   "witness"}),
    "network": frozenset({"interface", "mac", "mode", "address", "gateway", "dns"}),
    "host": frozenset({"hostname", "timezone", "ntp"}),
    "tls": frozenset({"mode", "cert", "key"}),
    "seal": frozenset({"mode", "threshold", "shares"}),
    "admin": frozenset({"username", "password"}),
    "ha": frozenset({"enrol_code", "enrolment", "node", "vip", "interface"}),
    "witness": frozenset({"address"}),
}
_REQUIRED = ("host.hostname", "seal.mode", "admin.password")
_UNKNOWN = ("unknown setting (misspelt?)", "不明な設定です（綴りの誤り？）")


@dataclass(frozen=True)
class NetworkAnswers:
    interface: str | None = None  # by name …
    mac: str | None = None  # … or by MAC; neither: the first link with a carrier
    mode: str = "dhcp"
    address: str | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answers:
    hostname: str
    seal_mode: str
    admin_password: str = field(repr=False)
    language: str = "en"
    role: str = "single"
    network: NetworkAnswers = field(default_factory=NetworkAnswers)
    timezone: str = "Asia/Tokyo"
    ntp: tuple[str, ...] = ()
    tls_mode: str = "self-signed"
    tls_cert: str = field(default="", repr=False)
    tls_key: str = field(default="", repr=False)
    threshold: int = 3
    shares: int = 5
    admin_username: str = "admin"
    pair: ha.PairAnswers | None = field(default=None, repr=False)  # role primary/standby
    witness_address: str | None = None  # role witness


def parse(text: str) -> Answers:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AnswersError(
            "(file)", f"not valid TOML: {exc}", f"TOML の形式が正しくありません: {exc}"
        ) from None
    _check_keys(raw)
    for name in _REQUIRED:
        section, _, key = name.partition(".")
        if key not in raw.get(section, {}):
            raise AnswersError(name, "missing", "指定がありません")
    net = raw.get("network", {})
    host = raw.get("host", {})
    tls = raw.get("tls", {})
    seal = raw.get("seal", {})
    admin = raw.get("admin", {})

    mode = _get(net, "network.mode", "dhcp", lambda v: checks.one_of(v, checks.NETWORK_MODES))
    address = gateway = None
    dns: tuple[str, ...] = ()
    if mode == "static":
        for key in ("address", "gateway"):
            if key not in net:
                raise AnswersError(
                    f"network.{key}",
                    "needed when network.mode is static",
                    "network.mode が static のときは必須です",
                )
        address = _get(net, "network.address", "", checks.interface_address)
        gateway = _get(net, "network.gateway", "", lambda v: checks.gateway(v, address or ""))
        dns = _get(net, "network.dns", [], checks.address_list)
    else:
        for key in ("address", "gateway", "dns"):
            if key in net:
                raise AnswersError(
                    f"network.{key}",
                    "only for network.mode = \"static\"",
                    "network.mode = \"static\" のときだけ指定できます",
                )
    if "interface" in net and "mac" in net:
        raise AnswersError("network.mac", "give interface or mac, not both",
                           "interface と mac はどちらか一方だけ指定してください")
    network = NetworkAnswers(
        interface=_get(net, "network.interface", None, _interface_name),
        mac=_get(net, "network.mac", None, checks.mac),
        mode=mode,
        address=address,
        gateway=gateway,
        dns=dns,
    )

    tls_mode = _get(tls, "tls.mode", "self-signed", lambda v: checks.one_of(v, checks.TLS_MODES))
    cert = key = ""
    if tls_mode == "import":
        from kura_firstboot import certificate

        for name in ("cert", "key"):
            if name not in tls:
                raise AnswersError(f"tls.{name}", "needed when tls.mode is import",
                                   "tls.mode が import のときは必須です")
        cert = _get(tls, "tls.cert", "", _text)
        key = _get(tls, "tls.key", "", _text)
        try:
            certificate.check_pair(cert.encode(), key.encode())
        except BadValue as exc:
            raise AnswersError("tls.key", exc.en, exc.ja) from None

    threshold = _get(seal, "seal.threshold", 3, _integer)
    count = _get(seal, "seal.shares", 5, _integer)
    try:
        checks.shares(threshold, count)
    except BadValue as exc:
        raise AnswersError("seal.shares", exc.en, exc.ja) from None
    username = _get(admin, "admin.username", "admin", checks.username)
    password = _get(admin, "admin.password", "", _text)
    try:
        checks.password(password, username)
    except BadValue as exc:
        # The policy's reasons never quote the password.
        raise AnswersError("admin.password", exc.en, exc.ja) from None

    role = _get(raw, "role", "single", lambda v: checks.one_of(v, checks.ROLES))
    ha.check_role_sections(role, raw)
    pair = ha.parse_pair(raw["ha"], datetime.now(UTC)) if role in ha.PAIR_ROLES else None
    witness = ha.parse_witness(raw.get("witness", {}), address) if role == "witness" else None

    return Answers(
        hostname=_get(host, "host.hostname", "", checks.hostname),
        seal_mode=_get(seal, "seal.mode", "", lambda v: checks.one_of(v, checks.SEAL_MODES)),
        admin_password=password,
        language=_get(raw, "language", "en", lambda v: checks.one_of(v, ("ja", "en"))),
        role=role,
        network=network,
        timezone=_get(host, "host.timezone", "Asia/Tokyo", _timezone),
        ntp=_get(host, "host.ntp", [], lambda v: checks.address_list(v, "ntp")),
        tls_mode=tls_mode,
        tls_cert=cert,
        tls_key=key,
        threshold=threshold,
        shares=count,
        admin_username=username,
        pair=pair,
        witness_address=witness,
    )


def _check_keys(raw: dict[str, Any]) -> None:
    for key, value in raw.items():
        if key not in _SECTIONS[""]:
            raise AnswersError(key, *_UNKNOWN)
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise AnswersError(
                    key, "must be a [section]", "[セクション] として書いてください"
                )
            for sub in value:
                if sub not in _SECTIONS[key]:
                    raise AnswersError(f"{key}.{sub}", *_UNKNOWN)


def _get(section: dict[str, Any], name: str, default: Any, check: Callable[[Any], Any]) -> Any:
    key = name.rpartition(".")[2]
    if key not in section:
        return default
    value = section[key]
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | list):
            raise BadValue("wrong type", "値の型が正しくありません")
        return check(value)
    except BadValue as exc:
        raise AnswersError(name, exc.en, exc.ja) from None
    except (TypeError, AttributeError):
        raise AnswersError(name, "wrong type", "値の型が正しくありません") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadValue("must be non-empty text", "空でない文字列を指定してください")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int):
        raise BadValue("must be a whole number", "整数を指定してください")
    return value


def _interface_name(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) < 16 or "/" in value or " " in value:
        raise BadValue("not an interface name", "インターフェース名ではありません")
    return value


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not checks.timezone_shape(value):
        raise BadValue(f"{value!r} is not a time zone name (e.g. Asia/Tokyo)",
                       f"{value!r} はタイムゾーン名ではありません（例: Asia/Tokyo）")
    return value.strip()


# --- where the answers come from ------------------------------------------------


def find(
    system: System, credentials_dir: Path | None, usb_wait: float = 3.0
) -> tuple[str, str] | None:
    """(where, text) of the first answers file found, or None."""
    if credentials_dir is not None:
        path = credentials_dir / CREDENTIAL
        if path.is_file():
            return f"credential {CREDENTIAL}", path.read_text(encoding="utf-8")
    device = _usb_device(usb_wait, system)
    if device is None:
        return None
    return f"{device} ({USB_LABEL})", read_from_device(system, device)


def _usb_device(wait: float, system: System) -> str | None:
    """The block device labelled KURA-SETUP; udev may still be probing a stick
    at boot, so look again for a few seconds."""
    try:
        import pyudev
    except ImportError:
        return None
    context = pyudev.Context()
    deadline = system.clock() + wait
    while True:
        for dev in context.list_devices(subsystem="block", ID_FS_LABEL=USB_LABEL):
            if dev.device_node:
                return str(dev.device_node)
        if system.clock() >= deadline:
            return None
        system.sleep(0.5)


def read_from_device(system: System, device: str) -> str:
    """Mount read-only in a private folder, read the file, unmount."""
    where = Path(tempfile.mkdtemp(prefix="kura-setup-", dir=system.path("/run")))
    try:
        system.run("mount", "-o", "ro,nosuid,nodev,noexec", device, where)
        try:
            path = where / USB_FILE
            if not path.is_file():
                raise AnswersError(
                    USB_FILE,
                    f"not found on the {USB_LABEL} stick",
                    f"{USB_LABEL} の USB メモリにありません",
                )
            return path.read_text(encoding="utf-8")
        finally:
            system.run("umount", where)
    finally:
        where.rmdir()
