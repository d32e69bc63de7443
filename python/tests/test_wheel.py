"""The built wheel installs into a fresh environment and works there (abi3: one wheel for
CPython 3.11 and later)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_into_a_fresh_venv_and_imports(tmp_path, echo_service):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "--out", str(dist)],
        cwd=PACKAGE,
        check=True,
    )
    (wheel,) = dist.glob("shm_runtime-*.whl")
    assert "-cp311-abi3-" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("shm_runtime/__init__.py", "shm_runtime/errors.py", "shm_runtime/py.typed", "shm_runtime/_native.pyi"):
        assert f in names, f"{f} not in {wheel.name}"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-index", str(wheel)], check=True)
    script = (
        "import shm_runtime, sys\n"
        f"c = shm_runtime.Client({echo_service.name!r})\n"
        "e = c.embed('ab', model='echo')\n"
        "assert memoryview(e).tolist() == [[97.0, 98.0]], memoryview(e).tolist()\n"
        "assert c.generate('hi', model='echo').text == 'hi'\n"
        "print(shm_runtime.__file__)\n"
    )
    out = subprocess.run([str(py), "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert str(venv) in out.stdout, out.stdout
