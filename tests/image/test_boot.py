"""The built appliance image boots in QEMU (UEFI, systemd-boot, UKI) and powers off cleanly.

Runs only when out/kura.qcow2 (or $KURA_IMAGE) exists, and must run when
KURA_IMAGE_TESTS=1. The serial log lands in out/test-artefacts/<test>/.
"""

from __future__ import annotations

import pytest

from vm import VM

pytestmark = pytest.mark.image

# Generous: under software emulation (TCG) a Debian kernel takes ~30 s to multi-user.
BOOT_TIMEOUT = 300


def test_image_boots_to_multi_user_and_powers_off(kura_vm: VM) -> None:
    kura_vm.start()
    kura_vm.expect(r"Linux version \S+", timeout=BOOT_TIMEOUT)
    kura_vm.expect(r"Welcome to ", timeout=BOOT_TIMEOUT)
    kura_vm.expect(r"Reached target .*Multi-User System", timeout=BOOT_TIMEOUT)
    assert "Kernel panic" not in kura_vm.console.text
    assert kura_vm.shutdown(timeout=120), "the appliance ignored the ACPI power button"
