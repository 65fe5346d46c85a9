"""The appliance image, used as a customer would: booted in QEMU (UEFI,
systemd-boot, a software TPM), set up at first boot, reached over HTTPS
through the forwarded port, rebooted, powered off, and its disk read.

Two machines:

- TPM seal, unattended: the answers go in as an SMBIOS credential. The DA
  signs in, makes a clerk, the clerk registers numbers and reads them back;
  after a reboot the vault has unsealed itself and the numbers are still
  there; no unit failed; then every byte of the powered-off disk is searched
  for the numbers' digits.
- Custodian shares, interactive on the serial console: a wrong static
  network answer is reverted and asked again; the shares are shown once and
  confirmed; after a reboot the vault stays sealed until M shares are entered
  through the API.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.image.conftest import VMFactory
from tests.support import Api, activate, my_numbers, provision
from tests.test_pairing_console import Serving, free_port, pair_through_the_console
from tests.test_pairing_flow import Standby
from vm import VM, ConsoleTimeout

pytestmark = pytest.mark.image

BOOT = 420  # seconds: boot under software emulation, plus the first-boot work
REPORT = re.compile(r"KURA-BOOT-REPORT failed=(\d+) vault=(\S+) console=(\S+) data_mib=(\d+) "
                    r"units=(\S+)")
DA_PASSWORD = "Kura-first-DA-2026!x"


def boot_report(machine: VM, after: int = 0) -> re.Match[str]:
    """The boot report line printed after `after` characters of console output."""
    deadline = time.monotonic() + BOOT
    while time.monotonic() < deadline:
        m = REPORT.search(machine.console.text, after)
        if m:
            return m
        time.sleep(1)
    raise AssertionError(f"no boot report on the console:\n{machine.console.tail()}")


def pinned_api(machine: VM, tmp_path: Path, fingerprint: str) -> Api:
    """An API client that trusts exactly the certificate whose SHA-256 the
    appliance's console showed (what an admin compares in the browser)."""
    port = machine.host_port(443)
    deadline = time.monotonic() + 120
    pem = ""
    while time.monotonic() < deadline:
        try:
            pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            time.sleep(2)
    assert pem, "the console never answered on the forwarded HTTPS port"
    served = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    assert served == fingerprint.replace(":", "").lower(), "served certificate ≠ console's"
    cafile = tmp_path / f"appliance-{port}.pem"
    cafile.write_text(pem)
    return Api(f"https://127.0.0.1:{port}", cafile, check_hostname=False)


def console_fingerprint(machine: VM, after: int = 0) -> str:
    m = re.compile(r"\[status\.fingerprint\][^\n]*?((?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2})")
    deadline = time.monotonic() + BOOT
    while time.monotonic() < deadline:
        found = m.search(machine.console.text, after)
        if found:
            return found.group(1)
        time.sleep(1)
    raise AssertionError(f"no certificate fingerprint on the console:\n{machine.console.tail()}")


def scan_disk(machine: VM, tmp_path: Path, needles: dict[str, bytes]) -> dict[str, int]:
    """Every byte of the machine's disk (image + overlay) flattened to raw."""
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(machine.overlay), str(raw)],
                   check=True)
    hits = dict.fromkeys(needles, 0)
    overlap = max(len(n) for n in needles.values())
    with raw.open("rb") as f:
        tail = b""
        while block := f.read(64 << 20):
            data = tail + block
            for name, needle in needles.items():
                hits[name] += data.count(needle)
            tail = data[-overlap:]
    raw.unlink()
    return hits


def answers(seal: str) -> bytes:
    return f"""
language = "en"
role = "single"
[network]
mode = "dhcp"
[host]
hostname = "kura-test"
[tls]
mode = "self-signed"
[seal]
mode = "{seal}"
threshold = 2
shares = 3
[admin]
username = "admin"
password = "{DA_PASSWORD}"
""".encode()


def test_unattended_tpm_setup_reboot_and_disk_theft(kura_vm: VM, tmp_path: Path) -> None:
    machine = kura_vm
    machine.credential("kura.setup", answers("tpm"))
    machine.start()
    first = boot_report(machine)
    assert first.group(2) == "unsealed", machine.console.tail()
    assert first.group(3) == "active"
    assert first.group(1) == "0", f"failed units at first boot: {first.group(5)}"
    # kura-data grew to fill the 2 GiB added to the disk.
    assert int(first.group(4)) > 1500, f"kura-data is only {first.group(4)} MiB"
    fingerprint = console_fingerprint(machine)
    # TPM mode: the recovery shares were printed once, on the console only.
    assert len(re.findall(r"\[seal\.share\] \d/3 ", machine.console.text)) == 3

    api = pinned_api(machine, tmp_path, fingerprint)
    # The web console's pages come from the image's /usr/share/kura/webui.
    login = api.page("/login")
    assert login.status == 200 and "ログイン" in login.body.decode(), login.body[:300]
    assert "script-src 'self'" in login.headers["content-security-policy"]
    assert api.page("/static/kura.css").status == 200
    da = activate(api.sign_in("admin", DA_PASSWORD), DA_PASSWORD)
    mu = provision(da, "clerk1", "MU")
    numbers = my_numbers(5, seed=random.randrange(1 << 30))
    marker = f"KURAMARK{random.randrange(10**8, 10**9)}"
    ids = {}
    for i, number in enumerate(numbers):
        r = mu.post("/payees", {"code": f"P-{i}", "name": f"{marker} {i}", "number": number})
        assert r.status == 201, r.body[:300]
        ids[number] = r.json["subject"]["id"]
    for number, sid in ids.items():
        shown = mu.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"})
        assert shown.status == 200 and shown.json["number"] == number

    # The booted image pairs a standby over the network: here the standby is
    # `kura ha offer --serve` on the host (reached from the VM at 10.0.2.2); the
    # DA proposes on the image's console, an SA approves, the DA delivers, and
    # the standby seals the image's root key (the envelope's check value proves
    # it is that key). The full pair runs in namespaces (tests/ha, docs/ha.md).
    sa = provision(da, "sa1", "SA")
    (tmp_path / "standby").mkdir()
    standby = Standby(tmp_path / "standby")
    served = Serving(standby, free_port(), "10.0.2.2", "--seal", "host")
    try:
        pair_through_the_console(da, sa, served)
        code, screen = served.finish(timeout=60)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert code == 0, screen
    assert re.search(r"paired with \S+: root key sealed with host", screen), screen

    # Reboot: the TPM unseals the vault by itself; everything is still there.
    assert machine.shutdown(timeout=180), "the appliance ignored the power button"
    mark = len(machine.console.text)
    machine.start()
    second = boot_report(machine, mark)
    assert second.group(2) == "unsealed", machine.console.tail()
    assert second.group(1) == "0", f"failed units after reboot: {second.group(5)}"
    mu2 = mu.sign_in(mu.username, mu.password, mu.totp_secret)
    for number, sid in ids.items():
        found = mu2.post("/subjects/lookup", {"number": number})
        assert found.status == 200 and found.json["subjects"][0]["id"] == sid
        shown = mu2.post(f"/subjects/{sid}/reveal", {"purpose": "payment_record"})
        assert shown.json["number"] == number

    # Disk theft: power off, read every byte. Names are stored in clear (the
    # control shows the scan sees the database); numbers never are.
    assert machine.shutdown(timeout=180)
    needles = {f"number{i}": n.encode() for i, n in enumerate(numbers)}
    needles["control"] = marker.encode()
    hits = scan_disk(machine, tmp_path, needles)
    assert hits.pop("control") > 0, "the scan did not find the planted control"
    assert hits == dict.fromkeys(hits, 0), f"numbers found on the disk: {hits}"


def test_custodian_shares_interactive_wizard_with_network_revert(kura_vm: VM,
                                                                tmp_path: Path) -> None:
    machine = kura_vm
    machine.start()

    def answer(tag: str, value: str, timeout: float = BOOT) -> None:
        machine.expect(re.escape(f"[{tag}]") + r"[^\n]*: $", timeout=timeout)
        machine.send(value)

    answer("language", "2")
    answer("network.interface", "")
    # A wrong static answer: the gateway does not exist, so nothing answers it.
    answer("network.mode", "static")
    answer("network.address", "10.0.2.15/24")
    answer("network.gateway", "10.0.2.77")
    answer("network.dns", "")
    machine.expect(r"\[network\.reverted\]", timeout=180)
    answer("network.interface", "")
    answer("network.mode", "dhcp")
    answer("network.confirm", "yes", timeout=180)
    answer("hostname", "kura-custodian")
    answer("time.zone", "")
    answer("time.ntp", "")
    answer("role", "single")
    answer("tls.mode", "self-signed")
    answer("seal.mode", "custodian")
    answer("seal.count", "3")
    answer("seal.threshold", "2")
    shares = []
    for i in range(1, 4):
        # Up to the end of the line: the serial port delivers it a piece at a time.
        m = machine.expect(rf"\[seal\.share\] {i}/3 ([a-z ]+?) *\r?\n", timeout=BOOT)
        shares.append(m.group(1).strip())
        answer("seal.share.confirm", "yes")
    answer("admin.username", "")
    answer("admin.password", DA_PASSWORD)
    answer("admin.password.again", DA_PASSWORD)
    machine.expect(r"\[finish\.done\]", timeout=BOOT)
    fingerprint = console_fingerprint(machine)
    assert len(set(shares)) == 3
    assert DA_PASSWORD not in machine.console.text, "the password was echoed on the console"

    assert machine.shutdown(timeout=180)
    mark = len(machine.console.text)
    machine.start()
    report = boot_report(machine, mark)
    assert report.group(2) == "sealed", machine.console.tail()
    assert report.group(1) == "0", f"failed units: {report.group(5)}"
    api = pinned_api(machine, tmp_path, fingerprint)
    # Sealed: signing in is refused until M shares are in.
    assert api.anonymous().post("/session", {"username": "admin",
                                             "password": DA_PASSWORD}).status == 503
    one = api.anonymous().post("/unseal", {"share": shares[2]})
    assert one.status == 200 and one.json["sealed"] is True, one.body[:300]
    assert one.json["shares_entered"] == 1 and one.json["shares_needed"] == 2
    two = api.anonymous().post("/unseal", {"share": shares[0]})
    assert two.status == 200 and two.json["sealed"] is False, two.body[:300]
    da = api.sign_in("admin", DA_PASSWORD)
    assert da.role == "DA"


def test_unattended_setup_from_a_kura_setup_usb_stick(kura_image: Path, vm_factory: VMFactory,
                                                      tmp_path: Path) -> None:
    """IT staff without a hypervisor credential put the answers on a stick."""
    stick = tmp_path / "stick.img"
    answers_file = tmp_path / "kura-setup.toml"
    answers_file.write_bytes(answers("tpm"))
    subprocess.run(["mkfs.vfat", "-n", "KURA-SETUP", "-C", str(stick), "8192"], check=True,
                   capture_output=True)
    subprocess.run(["mcopy", "-i", str(stick), str(answers_file), "::/kura-setup.toml"],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    machine = vm_factory(kura_image, grow="+1G", usb_stick=stick)
    machine.start()
    machine.expect(r"\[auto\.found\][^\n]*KURA-SETUP", timeout=BOOT)
    report = boot_report(machine)
    assert report.group(2) == "unsealed", machine.console.tail()
    assert report.group(1) == "0", f"failed units: {report.group(5)}"
    fingerprint = console_fingerprint(machine)
    api = pinned_api(machine, tmp_path, fingerprint)
    da = activate(api.sign_in("admin", DA_PASSWORD), DA_PASSWORD)
    assert da.get("/users").status == 200
    assert provision(da, "clerk-old", "MU").role == "MU"

    # Factory reset from the serial console's menu, guarded by the DA's
    # password (and TOTP) and a typed word; the stick is still in, so the
    # appliance sets itself up again from scratch.
    def answer(tag: str, value: str) -> None:
        machine.expect(re.escape(f"[{tag}]") + r"[^\n]*: $", timeout=120)
        machine.send(value)

    machine.send("")
    answer("menu", "reset")
    answer("reset.username", "admin")
    answer("reset.password", da.password)
    time.sleep(31 - time.time() % 30)  # a fresh TOTP window: a used code is refused
    answer("reset.totp", da.totp_code())
    answer("reset.confirm", "ERASE")
    mark = len(machine.console.text)
    try:
        machine.expect(r"Linux version", timeout=BOOT)
    except ConsoleTimeout:
        # Seen twice under emulation with the xHCI stick attached: the kernel says
        # "reboot: machine restart" and the firmware never comes back (not even
        # BdsDxe's first line). The appliance did its part; press reset once, as
        # an admin at the machine would, and the factory-reset boot must follow.
        tail = machine.console.text[mark:].rstrip().splitlines()[-1:]
        assert tail and "machine restart" in tail[0], machine.console.tail()
        machine.reset()
        machine.expect(r"Linux version", timeout=BOOT)
    again = boot_report(machine, mark)
    assert again.group(2) == "unsealed" and again.group(1) == "0", machine.console.tail()
    new_fingerprint = console_fingerprint(machine, mark)
    assert new_fingerprint != fingerprint, "the reset kept the old TLS key"
    fresh = pinned_api(machine, tmp_path, new_fingerprint).sign_in("admin", DA_PASSWORD)
    users = activate(fresh, DA_PASSWORD).get("/users").json
    assert "clerk-old" not in str(users), "the reset kept the old accounts"
    assert da.password not in machine.console.text


def test_power_cut_during_unattended_setup_resumes_cleanly(kura_vm: VM, tmp_path: Path) -> None:
    """The plug is pulled while the database is being made; the next boot
    carries on from the first unfinished step and the appliance works."""
    machine = kura_vm
    machine.credential("kura.setup", answers("tpm"))
    machine.start()
    machine.expect(r"\[step\] Step 6/10", timeout=BOOT)
    machine.expect(r"\[database\.working\]", timeout=120)
    time.sleep(3)
    machine.kill()
    mark = len(machine.console.text)
    machine.start()
    machine.expect(r"\[auto\.found\]", timeout=BOOT)
    resumed = machine.console.text[mark:]
    report = boot_report(machine, mark)
    after = machine.console.text[mark:]
    # Steps 1-5 were recorded as done before the cut and are not run again.
    assert "Step 1/10" not in after and "Step 5/10" not in after, resumed[-2000:]
    assert "Step 6/10" in after
    assert report.group(2) == "unsealed", machine.console.tail()
    assert report.group(1) == "0", f"failed units: {report.group(5)}"
    api = pinned_api(machine, tmp_path, console_fingerprint(machine, mark))
    da = activate(api.sign_in("admin", DA_PASSWORD), DA_PASSWORD)
    assert da.get("/users").status == 200
