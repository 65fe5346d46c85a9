"""Pure checks of the values the wizard takes, shared by the prompts and the
answers file. Each returns the value in its normal form or raises
:class:`BadValue` with a message in both languages."""

from __future__ import annotations

import ipaddress
import re

from kura_firstboot.errors import BadValue

ROLES = ("single", "primary", "standby", "witness")
SEAL_MODES = ("tpm", "custodian")
TLS_MODES = ("self-signed", "import")
NETWORK_MODES = ("dhcp", "static")
MAX_SHARES = 16  # SLIP-39's limit, as in kura.vault.sealing

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
_NTP = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


def hostname(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise BadValue(
            f"{value!r} is not a host name (letters, digits and '-', up to 63 per label)",
            f"{value!r} はホスト名として使えません（英数字と「-」、ラベルは63文字まで）",
        )
    if labels[0].isdigit():
        raise BadValue(
            "a host name cannot start with an all-digit label",
            "ホスト名の最初のラベルを数字だけにはできません",
        )
    return name


def interface_address(value: str) -> str:
    """An address with its prefix, e.g. 192.0.2.10/24."""
    given = value.strip()
    try:
        iface = ipaddress.ip_interface(given)
    except ValueError:
        iface = None
    bad = iface is None or "/" not in given
    if iface is not None and iface.version == 4 and iface.network.prefixlen < 31:
        bad = bad or iface.ip in (iface.network.network_address, iface.network.broadcast_address)
    if iface is None or bad:
        raise BadValue(
            f"{value!r} is not an address with a prefix (e.g. 192.0.2.10/24)",
            f"{value!r} はプレフィックス付きのアドレスではありません（例: 192.0.2.10/24）",
        )
    return str(iface)


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise BadValue(
            f"{value!r} is not an IP address", f"{value!r} は IP アドレスではありません"
        ) from None


def gateway(value: str, address: str) -> str:
    gw = ipaddress.ip_address(ip_address(value))
    net = ipaddress.ip_interface(address).network
    if gw.version != net.version or (gw not in net and not gw.is_link_local):
        raise BadValue(
            f"the gateway {gw} is not in {net}",
            f"ゲートウェイ {gw} は {net} の中にありません",
        )
    if gw == ipaddress.ip_interface(address).ip:
        raise BadValue(
            "the gateway cannot be the appliance's own address",
            "ゲートウェイに装置自身のアドレスは指定できません",
        )
    return str(gw)


def address_list(value: str | list[str], check: str = "ip") -> tuple[str, ...]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    out = []
    for item in items:
        if not isinstance(item, str):
            raise BadValue(f"{item!r} is not text", f"{item!r} は文字列ではありません")
        if check == "ip":
            out.append(ip_address(item))
        elif not _NTP.match(item):
            raise BadValue(
                f"{item!r} is not a server name or address",
                f"{item!r} はサーバー名またはアドレスではありません",
            )
        else:
            out.append(item)
    return tuple(out)


def mac(value: str) -> str:
    m = value.strip().lower().replace("-", ":")
    if not _MAC.match(m):
        raise BadValue(
            f"{value!r} is not a MAC address", f"{value!r} は MAC アドレスではありません"
        )
    return m


def timezone(value: str, known: bool) -> str:
    tz = value.strip()
    if not _TIMEZONE.match(tz) or ".." in tz or not known:
        raise BadValue(
            f"{value!r} is not a known time zone (e.g. Asia/Tokyo)",
            f"{value!r} は既知のタイムゾーンではありません（例: Asia/Tokyo）",
        )
    return tz


def timezone_shape(value: str) -> bool:
    return bool(_TIMEZONE.match(value.strip())) and ".." not in value


def one_of(value: str, allowed: tuple[str, ...]) -> str:
    v = value.strip().lower()
    if v not in allowed:
        raise BadValue(
            f"{value!r} is not one of {', '.join(allowed)}",
            f"{value!r} は {', '.join(allowed)} のいずれでもありません",
        )
    return v


def shares(threshold: int, count: int) -> tuple[int, int]:
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise BadValue(
            f"shares must be M of N with 2 ≤ M ≤ N ≤ {MAX_SHARES} (got {threshold} of {count})",
            f"シェアは 2 ≤ M ≤ N ≤ {MAX_SHARES} で指定してください（{threshold} / {count}）",
        )
    return threshold, count


def username(value: str) -> str:
    name = value.strip()
    if not _USERNAME.match(name):
        raise BadValue(
            f"{value!r} is not a user name (2–32 lower-case letters, digits, '.', '_', '-')",
            f"{value!r} はユーザー名として使えません（英小文字・数字・「.」「_」「-」2〜32文字）",
        )
    return name


def password(value: str, user: str) -> str:
    """The vault's default password policy, checked before anything is changed."""
    from kura.core.accounts import SecurityPolicy, check_new_password
    from kura.core.errors import KuraError

    try:
        check_new_password(SecurityPolicy(), value, user, [])
    except KuraError as exc:
        raise BadValue(exc.message_en, exc.message_ja) from None
    return value
