"""kura-agent's pure core: a bundle body as one nftables transaction, posture
read from fixture trees, the usbguard rule file (checked by usbguard's own
parser). No I/O on this host's firewall."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kura.agent import posture, rules, usb

CLERK: dict[str, Any] = {
    "profile": "clerk-pc", "serial": 7,
    "appliance_addresses": ["192.0.2.10", "2001:db8::10"], "appliance_ports": [8445, 443],
    "dns": ["192.0.2.53"], "ntp": ["192.0.2.123"],
    "allow": [{"to": "198.51.100.0/24", "proto": "tcp", "ports": [443]},
              {"to": "2001:db8:1::/48", "proto": "udp", "ports": [5060]}],
    "usb_mass_storage": "block",
}
SERVER: dict[str, Any] = {
    "profile": "business-server", "serial": 8,
    "protect": [{"proto": "tcp", "ports": [5432], "from": ["192.0.2.31", "2001:db8::31"]}],
}


def commands(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rules.ruleset(body)["nftables"])


def chain_rules(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [c["add"]["rule"] for c in commands(body) if "rule" in c.get("add", {})]


def by_comment(body: dict[str, Any], comment: str) -> list[dict[str, Any]]:
    found = [r["expr"] for r in chain_rules(body) if r["comment"] == comment]
    assert found, f"no rule {comment!r}"
    return found[0]


def test_one_transaction_replaces_only_the_agents_table() -> None:
    head = commands(CLERK)[:3]
    table = {"family": "inet", "name": "kura_agent"}
    assert head == [{"add": {"table": table}}, {"delete": {"table": table}},
                    {"add": {"table": table}}]
    for command in commands(CLERK)[3:]:
        (item,) = command["add"].values()
        assert (item["family"], item["table"]) == ("inet", "kura_agent")


def test_clerk_pc_drops_output_but_for_what_the_bundle_allows() -> None:
    (chain,) = [c["add"]["chain"] for c in commands(CLERK) if "chain" in c.get("add", {})]
    assert (chain["name"], chain["hook"], chain["policy"]) == ("output", "output", "drop")
    comments = [r["comment"] for r in chain_rules(CLERK)]
    assert comments[:2] == ["loopback", "established"]
    assert comments[-1] == "drop the rest"
    assert by_comment(CLERK, "drop the rest") == [{"counter": None}, {"drop": None}]
    appliance = by_comment(CLERK, "appliance 192.0.2.10/32")
    assert appliance[0]["match"]["left"] == {"payload": {"protocol": "ip", "field": "daddr"}}
    assert appliance[0]["match"]["right"] == "192.0.2.10"
    assert appliance[1]["match"]["right"] == {"set": [443, 8445]}
    v6 = by_comment(CLERK, "appliance 2001:db8::10/128")
    assert v6[0]["match"]["left"]["payload"]["protocol"] == "ip6"
    assert {"dns 192.0.2.53/32 udp", "dns 192.0.2.53/32 tcp",
            "ntp 192.0.2.123/32 udp"} <= set(comments)
    allow = by_comment(CLERK, "allow 198.51.100.0/24 tcp 443")
    assert allow[0]["match"]["right"] == {"prefix": {"addr": "198.51.100.0", "len": 24}}
    assert allow[1]["match"] == {"op": "==", "left": {"payload": {"protocol": "tcp",
                                                                  "field": "dport"}},
                                 "right": 443}
    allow6 = by_comment(CLERK, "allow 2001:db8:1::/48 udp 5060")
    assert allow6[0]["match"]["left"]["payload"] == {"protocol": "ip6", "field": "daddr"}


def test_business_server_guards_only_the_protected_ports() -> None:
    (chain,) = [c["add"]["chain"] for c in commands(SERVER) if "chain" in c.get("add", {})]
    assert (chain["name"], chain["hook"], chain["policy"]) == ("input", "input", "accept")
    comments = [r["comment"] for r in chain_rules(SERVER)]
    assert comments == ["loopback", "established", "protect tcp 5432 from 192.0.2.31/32",
                        "protect tcp 5432 from 2001:db8::31/128",
                        "protect tcp 5432 drop others"]
    v6 = by_comment(SERVER, "protect tcp 5432 from 2001:db8::31/128")
    assert v6[0]["match"]["left"]["payload"] == {"protocol": "ip6", "field": "saddr"}
    assert by_comment(SERVER, "protect tcp 5432 drop others")[-2:] == [{"counter": None},
                                                                       {"drop": None}]


@pytest.mark.parametrize("bad", [
    {"allow": [{"to": "not-an-address", "proto": "tcp", "ports": [1]}]},
    {"allow": [{"to": "192.0.2.1", "proto": "sctp", "ports": [1]}]},
    {"allow": [{"to": "192.0.2.1", "proto": "tcp", "ports": [70000]}]},
    {"allow": [{"to": "192.0.2.1", "proto": "any", "ports": [22]}]},
    {"profile": "printer"},
])
def test_a_body_that_cannot_be_rules_is_an_error(bad: dict[str, Any]) -> None:
    with pytest.raises(rules.RuleError):
        rules.ruleset({**CLERK, **bad})


# --- posture on fixture trees -------------------------------------------------------------

def test_os_release_reads_pretty_name(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 13'
                                             ' (trixie)"\n')
    assert posture.os_release(tmp_path) == "Debian GNU/Linux 13 (trixie)"
    assert posture.os_release(tmp_path / "nowhere") == ""


APT_OUTPUT = """Reading package lists...
Inst libssl3 [3.0.15-1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst openssl [3.0.15-1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst tzdata [2024a-0] (2025b-0+deb12u1 Debian:12.11/stable-updates [all])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
"""


def test_security_updates_counts_only_security_inst_lines() -> None:
    assert posture.count_security_updates(APT_OUTPUT) == 2
    assert posture.count_security_updates("") == 0
    assert posture.security_updates(("kura-no-such-apt-get",)) is None


def block_tree(root: Path, devices: dict[str, tuple[str, str, list[str]]]) -> Path:
    """/sys/class/block: name → (major:minor, dm uuid or "", slaves); a dm
    device's dm/name is its uuid's last part."""
    sys_block = root / "sys/class/block"
    for name, (dev, uuid, slaves) in devices.items():
        entry = sys_block / name
        (entry / "slaves").mkdir(parents=True)
        (entry / "dev").write_text(dev + "\n")
        if uuid:
            (entry / "dm").mkdir()
            (entry / "dm/uuid").write_text(uuid + "\n")
            (entry / "dm/name").write_text(uuid.rpartition("-")[2] + "\n")
        for slave in slaves:
            (entry / "slaves" / slave).mkdir()
    return sys_block


def mountinfo(root: Path, device: str, source: str = "/dev/x", fs: str = "ext4") -> Path:
    path = root / "mountinfo"
    path.write_text(f"22 1 {device} / / rw,relatime shared:1 - {fs} {source} rw\n"
                    "23 22 0:5 / /dev rw shared:2 - devtmpfs udev rw\n")
    return path


def test_root_on_lvm_on_luks_is_encrypted(tmp_path: Path) -> None:
    sys_block = block_tree(tmp_path, {
        "sda": ("8:0", "", []), "sda2": ("8:2", "", []),
        "dm-0": ("254:0", "CRYPT-LUKS2-abcdef-sda2_crypt", ["sda2"]),
        "dm-1": ("254:1", "LVM-xyz", ["dm-0"]),
    })
    assert posture.disk_encrypted(mountinfo(tmp_path, "254:1"), sys_block) is True
    assert posture.disk_encrypted(mountinfo(tmp_path, "254:0"), sys_block) is True
    # btrfs shows an anonymous device number; the source names the mapping.
    assert posture.disk_encrypted(mountinfo(tmp_path, "0:27", "/dev/mapper/sda2_crypt",
                                            "btrfs"), sys_block) is True
    assert posture.disk_encrypted(mountinfo(tmp_path, "0:27", "/dev/sda2", "btrfs"),
                                  sys_block) is False


def test_root_on_plain_disk_or_plain_lvm_is_not(tmp_path: Path) -> None:
    sys_block = block_tree(tmp_path, {
        "sda2": ("8:2", "", []), "dm-0": ("254:0", "LVM-xyz", ["sda2"]),
        "dm-1": ("254:1", "CRYPT-PLAIN-swap", ["sda2"]),
    })
    assert posture.disk_encrypted(mountinfo(tmp_path, "8:2"), sys_block) is False
    assert posture.disk_encrypted(mountinfo(tmp_path, "254:0"), sys_block) is False
    assert posture.disk_encrypted(mountinfo(tmp_path, "254:1"), sys_block) is False
    assert posture.disk_encrypted(tmp_path / "none", sys_block) is False


# --- USB --------------------------------------------------------------------------------

def test_mass_storage_is_interface_class_08() -> None:
    assert usb.mass_storage(":080650:")
    assert usb.mass_storage(":030101:080650:")
    assert not usb.mass_storage(":030101:030102:")
    added = usb.event("add", {"ID_VENDOR_ID": "0781", "ID_MODEL_ID": "5567",
                              "ID_USB_INTERFACES": ":080650:"}, blocked=True)
    assert (added["vendor"], added["product"], added["mass_storage"], added["allowed"]) == (
        "0781", "5567", True, False)
    keyboard = usb.event("add", {"ID_USB_INTERFACES": ":030101:"}, blocked=True)
    assert keyboard["allowed"] is True


PARSER = shutil.which("usbguard-rule-parser")


@pytest.mark.skipif(PARSER is None, reason="usbguard is not installed (Debian: usbguard)")
@pytest.mark.parametrize("setting", ["block", "allow"])
def test_usbguard_accepts_the_rule_file(tmp_path: Path, setting: str) -> None:
    assert PARSER is not None
    path = tmp_path / "10-kura-agent.conf"
    path.write_text(usb.rule_text({**CLERK, "usb_mass_storage": setting}))
    done = subprocess.run([PARSER, "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    blocking = "block with-interface one-of { 08:*:* }" in done.stdout
    assert blocking is (setting == "block")
    path.write_text(usb.BLOCK_RULE.replace("with-interface", "with-interfaces") + "\n")
    broken = subprocess.run([PARSER, "-f", str(path)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert broken.returncode != 0  # the parser does catch a bad rule
