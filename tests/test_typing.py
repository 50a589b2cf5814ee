"""The public API type-checks under mypy --strict and the stub matches the Rust module."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import hyperbroker

PKG = pathlib.Path(hyperbroker.__file__).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_stub_matches_native_module() -> None:
    r = _run("mypy.stubtest", "hyperbroker._core")
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_is_mypy_strict_clean() -> None:
    # by package name: works for an editable and for a site-packages install alike
    r = _run("mypy", "--strict", "--no-incremental", "-p", "hyperbroker")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues found" in r.stdout


def test_py_typed_shipped() -> None:
    assert (PKG / "py.typed").exists()
    assert (PKG / "_core.pyi").exists()
