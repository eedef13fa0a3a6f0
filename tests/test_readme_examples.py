"""Every ```python block of README.md runs as written (each in a fresh interpreter, in an empty
folder), so the examples a new user copies first cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[str]:
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_examples():
    assert len(_blocks()) >= 2


@pytest.mark.parametrize("code", _blocks(), ids=[f"block-{i}" for i in range(len(_blocks()))])
def test_readme_python_example_runs(code, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"README example failed:\n{code}\n--- stderr ---\n{r.stderr}"
