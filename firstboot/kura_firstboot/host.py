"""Host name, time zone, NTP servers and the appliance's role: small files,
each written only if it differs, so that running a step again changes nothing."""

from __future__ import annotations

from kura.core.errors import KuraError
from kura_firstboot.system import System

TIMESYNCD_CONF = "/etc/systemd/timesyncd.conf.d/kura.conf"
ROLE_FILE = "/etc/kura/role"
ZONEINFO = "/usr/share/zoneinfo"


def render_hosts(current: str, name: str) -> str:
    """/etc/hosts with Debian's 127.0.1.1 line naming this host."""
    short = name.split(".")[0]
    entry = f"127.0.1.1\t{name}" + (f" {short}" if short != name else "")
    lines = [line for line in current.splitlines() if not line.startswith("127.0.1.1")]
    if not any(line.startswith("127.0.0.1") for line in lines):
        lines.insert(0, "127.0.0.1\tlocalhost")
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("127.0.0.1")), 0)
    lines.insert(at, entry)
    return "\n".join(lines) + "\n"


def set_hostname(system: System, name: str) -> None:
    system.write_file("/etc/hostname", name + "\n")
    system.write_file("/etc/hosts", render_hosts(system.read_text("/etc/hosts") or "", name))
    try:
        system.run("hostnamectl", "set-hostname", name)
    except KuraError:
        # No hostnamed to ask: set the running kernel's name; the file above
        # is what counts at the next boot.
        system.run("hostname", name)


def timezone_known(system: System, tz: str) -> bool:
    return system.path(f"{ZONEINFO}/{tz}").is_file()


def set_timezone(system: System, tz: str) -> None:
    """/etc/localtime → the zone (what timedatectl does, without needing D-Bus)."""
    link = system.path("/etc/localtime")
    target = f"{ZONEINFO}/{tz}"
    if not (link.is_symlink() and str(link.readlink()) == target):
        tmp = link.with_name(".localtime.kura")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    system.write_file("/etc/timezone", tz + "\n")


def render_timesyncd(servers: tuple[str, ...]) -> str:
    return "# Written by kura-firstboot.\n[Time]\nNTP=" + " ".join(servers) + "\n"


def set_ntp(system: System, servers: tuple[str, ...]) -> None:
    """Our NTP servers, or systemd's defaults when none are given."""
    if servers:
        changed = system.write_file(TIMESYNCD_CONF, render_timesyncd(servers))
    else:
        changed = system.remove(TIMESYNCD_CONF)
    if changed:
        system.systemctl("restart", "systemd-timesyncd.service")


def set_role(system: System, role: str) -> None:
    kura_gid = system.group("kura")
    system.make_dir("/etc/kura", 0o750, (0, kura_gid))
    system.write_file(ROLE_FILE, role + "\n", mode=0o644)
