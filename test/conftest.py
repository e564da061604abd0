"""Cross-language tests: the same no-orphan guard as pyshim/tests, and its helpers on sys.path.

The guard (pyshim/tests/conftest.py) fails the run when a swiftmoe-sidecar or
swiftmoe-strategy-* process started by the tests outlives the session. It is loaded here under
its own module name, so ``pytest test`` alone runs it too; the check runs once per session.
Importing it also puts pyshim/tests on sys.path (distributed.py, test_engine_support.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_GUARD = Path(__file__).resolve().parents[1] / "pyshim" / "tests" / "conftest.py"
_NAME = "swiftmoe_orphan_guard"


def _load_guard():
    mod = sys.modules.get(_NAME)
    if mod is None:
        spec = importlib.util.spec_from_file_location(_NAME, _GUARD)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        spec.loader.exec_module(mod)
    return mod


guard = _load_guard()
pytest_configure = guard.pytest_configure
pytest_sessionfinish = guard.pytest_sessionfinish
