"""USB: mass storage switched through usbguard, and plug events reported.

Blocking is usbguard's job (it deauthorises a device before a driver binds);
the agent only writes its own rule file, ``/etc/usbguard/rules.d/10-kura-agent.conf``
(usbguard reads ``RuleFolder`` files in alphanumeric order after its
``RuleFile``, first matching rule wins), and, when the daemon runs, replaces
its labelled rule at run time through the ``usbguard`` CLI (``append-rule -t``:
not written back to the policy files, which the rule file already holds).
A device whose rule in the site's own ``rules.conf`` names it by hash is
decided there first: that is the site's explicit choice.

Events come from udev (pyudev): every USB device added or removed, with its
vendor and product IDs, and whether one of its interfaces is mass storage
(class 08, from udev's ``ID_USB_INTERFACES``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RULE_FILE = Path("/etc/usbguard/rules.d/10-kura-agent.conf")
LABEL = "kura-agent"
BLOCK_RULE = f'block with-interface one-of {{ 08:*:* }} label "{LABEL}"'
# usbguard's Rule::RootID is 0: "append after the root" puts a rule first.
FIRST = "0"

log = logging.getLogger("kura-agent")


def rule_text(body: dict[str, Any]) -> str:
    """The agent's usbguard rule file for ``body`` (a bundle's body)."""
    head = ("# Written by kura-agent from the appliance's signed policy bundle "
            f"(serial {body.get('serial')}).\n# Changes here are overwritten.\n")
    if body.get("usb_mass_storage") == "block":
        return head + BLOCK_RULE + "\n"
    return head + "# USB mass storage: not blocked by Kura (the site's own rules apply).\n"


def _usbguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["usbguard", *args], capture_output=True, text=True, timeout=20,
                          check=False)


def apply(body: dict[str, Any], rule_file: Path = RULE_FILE) -> str:
    """Make usbguard follow ``body``. Returns what the report says of it:
    ``enforced`` (daemon running, rule in place), ``stored`` (rule file
    written, daemon not running: it applies at its next start) or ``absent``
    (usbguard is not installed; nothing is blocked)."""
    if shutil.which("usbguard") is None or not rule_file.parent.parent.is_dir():
        return "absent"
    rule_file.parent.mkdir(mode=0o700, exist_ok=True)
    temporary = rule_file.with_name(f".{rule_file.name}.tmp")
    temporary.write_text(rule_text(body))
    temporary.chmod(0o600)  # usbguard refuses rule files others may read or write
    temporary.replace(rule_file)
    listed = _usbguard("list-rules")
    if listed.returncode != 0:
        return "stored"
    for line in listed.stdout.splitlines():
        number, _, rule = line.partition(":")
        if f'label "{LABEL}"' in rule and number.strip().isdigit():
            _usbguard("remove-rule", number.strip())
    if body.get("usb_mass_storage") == "block":
        added = _usbguard("append-rule", "-t", "-a", FIRST, BLOCK_RULE)
        if added.returncode != 0:
            log.warning("usbguard would not put the rule first (%s); appending it",
                        added.stderr.strip()[:200])
            added = _usbguard("append-rule", "-t", BLOCK_RULE)
        if added.returncode != 0:
            log.error("usbguard refused the rule: %s", added.stderr.strip()[:200])
            return "stored"
    return "enforced"


def mass_storage(interfaces: str) -> bool:
    """Whether udev's ``ID_USB_INTERFACES`` (":080650:030101:") names a mass
    storage interface (class 08)."""
    return any(entry[:2].lower() == "08" for entry in interfaces.split(":") if len(entry) == 6)


def event(action: str, properties: dict[str, str], blocked: bool) -> dict[str, Any]:
    """One ``usb_events`` entry of the report."""
    storage = mass_storage(properties.get("ID_USB_INTERFACES", ""))
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "vendor": properties.get("ID_VENDOR_ID", ""),
        "product": properties.get("ID_MODEL_ID", ""),
        "mass_storage": storage,
        "allowed": not (storage and blocked and action == "add"),
    }


def watch(on_event: Callable[[str, dict[str, str]], None]) -> Any:
    """Start a udev monitor thread calling ``on_event(action, properties)`` for
    every USB device added or removed; returns the observer (``.stop()``), or
    None when udev is not available (a container)."""
    try:
        import pyudev  # only the run loop watches devices
        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context)
        monitor.filter_by(subsystem="usb", device_type="usb_device")

        def handle(device: Any) -> None:
            action = device.action
            if action in ("add", "remove"):
                on_event(action, {key: str(device.properties.get(key, ""))
                                  for key in ("ID_VENDOR_ID", "ID_MODEL_ID",
                                              "ID_USB_INTERFACES")})

        observer = pyudev.MonitorObserver(monitor, callback=handle, name="kura-agent-usb")
        observer.start()
        return observer
    except Exception as exc:  # no udev here (a container): report without events
        log.warning("USB events are not watched: %s", exc)
        return None
