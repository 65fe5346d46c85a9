"""kura-agent enforcing bundles for real: two network namespaces joined by a
veth pair (ka-c, the clerk PC or client side; ka-s, the appliance or business
server side), TCP listeners in ka-s, and the agent's own CLI run inside a
namespace (``apply FILE``, ``restore``). What is asserted is what a user
would see: a connection that goes through, one that does not, a refused
bundle that changes nothing in the kernel, and the last good bundle back
after the table was lost (as after a reboot)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kura.agent.state import Identity, State
from kura.core import bundle
from tests.agents.topology import LISTENER

TOP = Path(__file__).parent.parent
KEY = Ed25519PrivateKey.generate()
APPLIANCE = "cd" * 32
CLIENT, CLIENT2, SERVER, OTHER = "10.77.0.1", "10.77.0.5", "10.77.0.2", "10.77.0.3"
CLIENT6, SERVER6, OTHER6 = "fd77::1", "fd77::2", "fd77::3"
PORTS = (8445, 5432)

try:
    import nftables  # noqa: F401 - only whether it is there
    HAVE_NFTABLES = True
except ImportError:
    HAVE_NFTABLES = False

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None
    or not HAVE_NFTABLES,
    reason="needs root, iproute2, nftables and python3-nftables (./build.sh links it into .venv)")

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(0.7); s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], int(sys.argv[3])))
except OSError:
    sys.exit(1)
"""


def ns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          timeout=30, check=check)


def env() -> dict[str, str]:
    path = os.pathsep.join([str(TOP / "daemons"), *sys.path[1:]])
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def network() -> Iterator[None]:
    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)

    for name in ("ka-c", "ka-s"):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    listener = None
    try:
        ip("netns", "add", "ka-c")
        ip("netns", "add", "ka-s")
        ip("link", "add", "ka-c0", "netns", "ka-c", "type", "veth", "peer", "name", "ka-s0",
           "netns", "ka-s")
        for name, dev, addresses in (("ka-c", "ka-c0", (CLIENT, CLIENT2, CLIENT6)),
                                     ("ka-s", "ka-s0", (SERVER, OTHER, SERVER6, OTHER6))):
            for address in addresses:
                if ":" in address:
                    ip("-n", name, "addr", "add", f"{address}/64", "dev", dev, "nodad")
                else:
                    ip("-n", name, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
            ip("-n", name, "link", "set", "lo", "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", "ka-s", sys.executable, "-c", LISTENER,
             *map(str, PORTS)], stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        for name in ("ka-c", "ka-s"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def reaches(source_ns: str, source: str, target: str, port: int) -> bool:
    return ns(source_ns, sys.executable, "-c", CONNECT, source, target, str(port),
              check=False).returncode == 0


def agent(tmp_path: Path, profile: str) -> Path:
    """A state directory enrolled (by hand) with the test's appliance."""
    state = State(tmp_path / f"state-{profile}")
    state.save_identity(Identity(agent_id="a-1", profile=profile, server="https://x:8445",
                                 fingerprint=APPLIANCE,
                                 bundle_key=bundle.public_key_text(KEY.public_key())))
    return state.root


def envelope(tmp_path: Path, serial: int, profile: str = "clerk-pc", **body: Any) -> Path:
    path = tmp_path / f"bundle-{profile}-{serial}-{len(body)}.json"
    signed = bundle.sign({"appliance": APPLIANCE, "profile": profile, "serial": serial, **body},
                         KEY)
    path.write_text(json.dumps(signed))
    return path


def kura_agent(name: str, state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-m", "kura.agent", *argv,
         "--state", str(state), "--usbguard-rules", str(state / "usbguard.conf")],
        capture_output=True, text=True, timeout=60, check=False, env=env())


def table(name: str) -> str:
    return ns(name, "nft", "-j", "list", "table", "inet", "kura_agent", check=False).stdout


@pytest.fixture
def clean(network: None) -> Iterator[None]:
    yield
    for name in ("ka-c", "ka-s"):
        ns(name, "nft", "delete", "table", "inet", "kura_agent", check=False)


CLERK_BODY: dict[str, Any] = {"appliance_addresses": [SERVER], "appliance_ports": [8445],
                              "dns": [], "ntp": [], "allow": [], "usb_mass_storage": "block"}


def test_clerk_pc_reaches_only_the_appliance(tmp_path: Path, clean: None) -> None:
    state = agent(tmp_path, "clerk-pc")
    assert reaches("ka-c", CLIENT, SERVER, 5432) and reaches("ka-c", CLIENT, OTHER, 8445)
    done = kura_agent("ka-c", state, "apply", str(envelope(tmp_path, 1, **CLERK_BODY)))
    assert done.returncode == 0, done.stderr
    assert "bundle 1 enforced" in done.stdout
    assert reaches("ka-c", CLIENT, SERVER, 8445)
    assert not reaches("ka-c", CLIENT, SERVER, 5432)
    assert not reaches("ka-c", CLIENT, OTHER, 8445)
    # A newer bundle allowing one more destination takes effect at once.
    wider = {**CLERK_BODY, "allow": [{"to": "10.77.0.0/29", "proto": "tcp", "ports": [5432]}]}
    assert kura_agent("ka-c", state, "apply", str(envelope(tmp_path, 2, **wider))).returncode == 0
    assert reaches("ka-c", CLIENT, OTHER, 5432)
    assert not reaches("ka-c", CLIENT, OTHER, 8445)
    status = kura_agent("ka-c", state, "status")
    assert "enforced bundle: serial 2" in status.stdout
    assert "table inet kura_agent loaded" in status.stdout
    assert json.loads((state / "bundle.json").read_text()) == json.loads(
        envelope(tmp_path, 2, **wider).read_text())
    assert "block with-interface" in (state / "usbguard.conf").read_text()


def test_business_server_port_only_from_the_listed_address(tmp_path: Path,
                                                           clean: None) -> None:
    state = agent(tmp_path, "business-server")
    body = {"protect": [{"proto": "tcp", "ports": [5432], "from": [CLIENT2]}]}
    done = kura_agent("ka-s", state, "apply",
                      str(envelope(tmp_path, 3, "business-server", **body)))
    assert done.returncode == 0, done.stderr
    assert reaches("ka-c", CLIENT2, SERVER, 5432)
    assert not reaches("ka-c", CLIENT, SERVER, 5432)
    assert reaches("ka-c", CLIENT, SERVER, 8445)  # not protected: left alone
    assert "packets dropped" in kura_agent("ka-s", state, "status").stdout
    assert " 0 packets dropped" not in kura_agent("ka-s", state, "status").stdout


def tampered(path: Path) -> Path:
    data = json.loads(path.read_text())
    body = json.loads(bundle.base64.b64decode(data["body"]))
    body["appliance_addresses"] = [SERVER, OTHER]
    data["body"] = bundle.base64.b64encode(bundle.encode_body(body)).decode()
    out = path.with_name("tampered.json")
    out.write_text(json.dumps(data))
    return out


def test_refused_bundles_change_nothing(tmp_path: Path, clean: None) -> None:
    state = agent(tmp_path, "clerk-pc")
    assert kura_agent("ka-c", state, "apply",
                      str(envelope(tmp_path, 5, **CLERK_BODY))).returncode == 0
    before, stored = table("ka-c"), (state / "bundle.json").read_bytes()
    wide_open = {**CLERK_BODY, "allow": [{"to": "0.0.0.0/0", "proto": "any"}]}
    other_key = tmp_path / "other-key.json"
    other_key.write_text(json.dumps(bundle.sign(
        {"appliance": APPLIANCE, "profile": "clerk-pc", "serial": 9, **wide_open},
        Ed25519PrivateKey.generate())))
    offers = {
        "bad_signature": tampered(envelope(tmp_path, 6, **CLERK_BODY)),
        "older": envelope(tmp_path, 4, **wide_open),
        "wrong_profile": envelope(tmp_path, 7, "business-server", protect=[]),
        "conflict": envelope(tmp_path, 5, **wide_open),
    }
    for reason, path in offers.items():
        done = kura_agent("ka-c", state, "apply", str(path))
        assert done.returncode == 3, (reason, done.stdout, done.stderr)
        assert f"refused: {reason}" in done.stderr
    done = kura_agent("ka-c", state, "apply", str(other_key))
    assert (done.returncode, "refused: bad_signature" in done.stderr) == (3, True)
    assert table("ka-c") == before
    assert (state / "bundle.json").read_bytes() == stored
    assert not reaches("ka-c", CLIENT, OTHER, 8445)
    again = kura_agent("ka-c", state, "apply", str(envelope(tmp_path, 5, **CLERK_BODY)))
    assert (again.returncode, again.stdout.strip()) == (0, "bundle 5 already enforced")


def test_restore_brings_back_the_last_good_bundle(tmp_path: Path, clean: None) -> None:
    state = agent(tmp_path, "clerk-pc")
    assert kura_agent("ka-c", state, "apply",
                      str(envelope(tmp_path, 11, **CLERK_BODY))).returncode == 0
    ns("ka-c", "nft", "delete", "table", "inet", "kura_agent")  # as after a reboot
    assert reaches("ka-c", CLIENT, OTHER, 8445)
    assert "NOT loaded" in kura_agent("ka-c", state, "status").stdout
    done = kura_agent("ka-c", state, "restore")
    assert done.returncode == 0, done.stderr
    assert "bundle 11 enforced again" in done.stdout
    assert not reaches("ka-c", CLIENT, OTHER, 8445)
    assert reaches("ka-c", CLIENT, SERVER, 8445)


def test_restore_refuses_a_stored_bundle_that_does_not_verify(tmp_path: Path,
                                                              clean: None) -> None:
    state = agent(tmp_path, "clerk-pc")
    (state / "bundle.json").write_text(tampered(envelope(tmp_path, 12, **CLERK_BODY))
                                       .read_text())
    done = kura_agent("ka-c", state, "restore")
    assert done.returncode == 1
    assert "does not verify (bad_signature)" in done.stderr
    assert table("ka-c") == ""
    unenrolled = kura_agent("ka-c", tmp_path / "empty", "status")
    assert unenrolled.returncode == 1 and "not enrolled" in unenrolled.stderr


def test_clerk_pc_over_ipv6(tmp_path: Path, clean: None) -> None:
    """IPv6 addresses and networks go to ip6 daddr, and neighbour discovery
    still works under the output policy drop (the cache is flushed first)."""
    state = agent(tmp_path, "clerk-pc")
    body = {**CLERK_BODY, "appliance_addresses": [SERVER6],
            "allow": [{"to": "fd77::3/128", "proto": "tcp", "ports": [5432]}]}
    done = kura_agent("ka-c", state, "apply", str(envelope(tmp_path, 21, **body)))
    assert done.returncode == 0, done.stderr
    ns("ka-c", "ip", "neigh", "flush", "all")
    assert reaches("ka-c", CLIENT6, SERVER6, 8445)
    assert reaches("ka-c", CLIENT6, OTHER6, 5432)
    assert not reaches("ka-c", CLIENT6, OTHER6, 8445)
    assert not reaches("ka-c", CLIENT6, SERVER6, 5432)
    assert not reaches("ka-c", CLIENT, SERVER, 8445)  # the IPv4 address is not listed now
