"""Tests that boot a machine in QEMU through image/vm.py.

image/ is the builder's folder, not a Python package: put it on sys.path so that
`import vm` finds image/vm.py (mypy: mypy_path includes "image").
"""

import sys
from pathlib import Path

_IMAGE_DIR = str(Path(__file__).resolve().parents[2] / "image")
if _IMAGE_DIR not in sys.path:
    sys.path.insert(0, _IMAGE_DIR)
