"""Fixtures shared by the tests of this folder.

lib_path, use_lib: the native library (swiftmoe.engine.native) built from this checkout's sources,
for test_native_*.py (native_cases.py has those tests' shared cases)."""

from __future__ import annotations

import pytest

from swiftmoe.engine import native
from swiftmoe.engine.native.build import build_library


@pytest.fixture(scope="module")
def lib_path(tmp_path_factory):
    """The whole library built from this checkout's sources (never a stale one), once a module."""
    return build_library(tmp_path_factory.mktemp("native"))


@pytest.fixture
def use_lib(lib_path, monkeypatch):
    """native loads lib_path (and is on) for the test, and forgets it after."""
    monkeypatch.setenv(native.ENV_LIB, str(lib_path))
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    native.reset()
    yield lib_path
    native.reset()
