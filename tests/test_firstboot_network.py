"""The network step: networkd files rendered and matched by MAC, verified
with pyroute2 on a real link (a veth whose peer, the gateway, lives in its
own network namespace), and reverted when the setting does not work."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kura_firstboot import network
from tests.firstboot_support import Lan, Networkd, make_lan, make_system

needs_netns = pytest.mark.skipif(
    shutil.which("ip") is None
    or subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode != 0,
    reason="needs iproute2 and network namespaces (root)",
)


def test_static_file() -> None:
    plan = network.NetworkPlan("ens3", "52:54:00:12:34:56", "static", "192.0.2.10/24",
                               "192.0.2.1", ("192.0.2.53", "192.0.2.54"))
    assert plan.file_name == "10-kura-ens3.network"
    body = network.render(plan)
    assert "[Match]\nMACAddress=52:54:00:12:34:56\n" in body
    assert "[Network]\nAddress=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\nDNS=192.0.2.54\n" \
        in body
    assert "DHCP" not in body


def test_dhcp_file() -> None:
    body = network.render(network.NetworkPlan("ens3", "52:54:00:12:34:56", "dhcp"))
    assert "MACAddress=52:54:00:12:34:56" in body and "DHCP=yes" in body
    assert "\nAddress=" not in body


def test_apply_replaces_only_the_wizards_files_and_revert_restores_them(tmp_path: Path) -> None:
    system, recorder = make_system(tmp_path)
    folder = system.root / "etc/systemd/network"
    folder.mkdir(parents=True)
    (folder / "99-kura-default.network").write_text("[Match]\nType=ether\n")
    (folder / "10-kura-ens4.network").write_text("old\n")
    before = network.apply(system, network.NetworkPlan("ens3", "52:54:00:00:00:01", "dhcp"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "10-kura-ens3.network", "99-kura-default.network"]
    network.revert(system, before)
    assert sorted(p.name for p in folder.iterdir()) == [
        "10-kura-ens4.network", "99-kura-default.network"]
    assert (folder / "10-kura-ens4.network").read_text() == "old\n"
    assert recorder.commands() == ["systemctl restart systemd-networkd.service"] * 2


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    yield from make_lan("n")


@needs_netns
def test_links_are_listed_with_mac_and_carrier(lan: Lan) -> None:
    found = {link.name: link for link in network.interfaces()}
    assert found[lan.ifname].mac == lan.mac
    assert found[lan.ifname].carrier
    assert "lo" not in found


@needs_netns
def test_static_setting_verified_with_the_right_gateway(tmp_path: Path, lan: Lan) -> None:
    system, _ = make_system(tmp_path)
    system.runner.hooks[("systemctl", "restart", "systemd-networkd.service")] = Networkd(
        system.root, lan)
    plan = network.NetworkPlan(lan.ifname, lan.mac, "static", lan.address, lan.gateway)
    network.apply(system, plan)
    verdict = network.verify(system, plan, timeout=5)
    assert verdict.ok, verdict.problem_en
    assert verdict.address == "198.51.100.10"


@needs_netns
def test_wrong_gateway_fails_and_the_files_are_reverted(tmp_path: Path, lan: Lan) -> None:
    system, _ = make_system(tmp_path)
    networkd = Networkd(system.root, lan)
    system.runner.hooks[("systemctl", "restart", "systemd-networkd.service")] = networkd
    good = network.NetworkPlan(lan.ifname, lan.mac, "static", "198.51.100.20/24", lan.gateway)
    network.apply(system, good)
    saved = network.snapshot(system)
    wrong = network.NetworkPlan(lan.ifname, lan.mac, "static", lan.address, "198.51.100.99")
    before = network.apply(system, wrong)
    verdict = network.verify(system, wrong, timeout=1)
    assert not verdict.ok
    assert "198.51.100.99 does not answer" in verdict.problem_en
    assert "応答がありません" in verdict.problem_ja
    network.revert(system, before)
    assert network.snapshot(system) == saved
    assert networkd.restarts == 3
    # The link is back on the old address, and that works.
    assert network.verify(system, good, timeout=5).ok


@needs_netns
def test_address_missing_is_reported(tmp_path: Path, lan: Lan) -> None:
    system, _ = make_system(tmp_path)  # no networkd stand-in: nothing is applied
    plan = network.NetworkPlan(lan.ifname, lan.mac, "static", "198.51.100.30/24", lan.gateway)
    verdict = network.verify(system, plan, timeout=0)
    assert not verdict.ok and "198.51.100.30/24 is not on" in verdict.problem_en


@needs_netns
def test_dhcp_needs_a_lease_and_a_default_route(tmp_path: Path, lan: Lan) -> None:
    system, _ = make_system(tmp_path)
    subprocess.run(["ip", "addr", "flush", "dev", lan.ifname], check=True)
    plan = network.NetworkPlan(lan.ifname, lan.mac, "dhcp")
    assert "no DHCP lease" in network.verify(system, plan, timeout=0).problem_en
    subprocess.run(["ip", "addr", "add", "198.51.100.40/24", "dev", lan.ifname], check=True)
    verdict = network.verify(system, plan, timeout=0)
    assert not verdict.ok and "no default route" in verdict.problem_en
    # A default route through the link (a high metric: the host's own stays in use).
    route = ["default", "via", lan.gateway, "dev", lan.ifname, "metric", "4000"]
    subprocess.run(["ip", "route", "add", *route], check=True)
    try:
        verdict = network.verify(system, plan, timeout=0)
    finally:
        subprocess.run(["ip", "route", "del", *route], check=False)
    assert verdict.ok and verdict.address == "198.51.100.40"
