"""The layers keep to their imports, checked in fresh interpreters: a stream
dialect loads no web framework, socket or event loop library (it is sans-IO),
and the Quart app loads no stream dialect or data plane."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

IO_LIBRARIES = ("trio", "quart", "quart_trio", "hypercorn", "wsproto", "h11", "httpx")


def _modules_after(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("dialect", ["logs", "jobs", "native", "async_jobs", "multiplex", "live"])
def test_a_dialect_is_sans_io(dialect: str) -> None:
    loaded = _modules_after(f"jobserver.dialects.{dialect}")
    assert not {m.split(".")[0] for m in loaded} & set(IO_LIBRARIES)


def test_the_web_app_imports_no_stream_dialect() -> None:
    loaded = _modules_after("jobserver.api.app")
    assert not [m for m in loaded if m.startswith(("jobserver.dialects", "jobserver.dataplane"))]


@pytest.mark.parametrize("module", ["codec", "sqlite_blocking", "postgres_blocking"])
def test_the_stores_blocking_halves_do_not_import_trio(module: str) -> None:
    """They run in worker threads: trio is the other half's (committer.py)."""
    source = (Path(__file__).parent.parent / "jobserver" / "store" / f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported and "trio" not in imported
