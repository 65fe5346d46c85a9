"""Fixtures for tests that boot machines in QEMU.

`kura_image` is the built appliance image: out/kura.qcow2, or $KURA_IMAGE. When it is
missing, tests that need it are skipped, unless KURA_IMAGE_TESTS=1 (CI sets it), where
they fail: a CI run must not pass by skipping the image.

`vm_factory` makes `vm.VM` objects with their state in the test's tmp_path; at teardown
it stops them and copies their logs to out/test-artefacts/<test name>/.
KURA_VM_ACCEL=kvm|tcg forces an accelerator (default: KVM when it works).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vm import VM

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "out" / "test-artefacts"

VMFactory = Callable[..., VM]


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so that --strict-markers accepts it even before pyproject does.
    config.addinivalue_line("markers", "image: boots the built Kura image in QEMU "
                                       "(needs out/kura.qcow2 or $KURA_IMAGE)")


@pytest.fixture(scope="session")
def kura_image() -> Path:
    """The built image; skip (or, with KURA_IMAGE_TESTS=1, fail) when there is none."""
    image = Path(os.environ.get("KURA_IMAGE") or ROOT / "out" / "kura.qcow2")
    if not image.is_file():
        message = (f"no Kura image at {image}: build it with ./build.sh image "
                   "(or point KURA_IMAGE at one)")
        if os.environ.get("KURA_IMAGE_TESTS") == "1":
            pytest.fail(f"{message}; KURA_IMAGE_TESTS=1 requires the image tests to run",
                        pytrace=False)
        pytest.skip(message)
    return image


@pytest.fixture
def vm_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VMFactory]:
    """Make VMs: `vm_factory(image, name="vm", **VM options)`; all stopped at teardown."""
    made: list[tuple[str, VM]] = []
    accel = os.environ.get("KURA_VM_ACCEL") or None

    def make(image: Path, name: str = "vm", **options: Any) -> VM:
        options.setdefault("accel", accel)
        machine = VM(image, tmp_path / name, **options)
        made.append((name, machine))
        return machine

    yield make
    test_dir = ARTEFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    for name, machine in made:
        machine.close()
        for log in (machine.serial_log, machine.qemu_log):
            if log.exists():
                test_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, test_dir / f"{name}-{log.name}")


@pytest.fixture
def kura_vm(kura_image: Path, vm_factory: VMFactory) -> VM:
    """The Kura image in a fresh VM (disk grown by 2 GiB), not yet started."""
    return vm_factory(kura_image, grow="+2G")
