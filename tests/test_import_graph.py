"""The module graph of trio_streams/ has no cycle and http/ imports nothing from storage/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_cycle_and_no_http_to_storage_import() -> None:
    graph = _script()
    assert graph.problems(graph.build_graph()) == []


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_cycle_hidden_behind_type_checking_is_found(tmp_path: Path) -> None:
    graph = _script()
    package = _package(tmp_path, {
        "a.py": "from .b import B\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n",
        "c.py": "def f():\n    from . import a\n",
    })
    assert graph.problems(graph.build_graph(package), []) == ["import cycle: pkg.a <-> pkg.b <-> pkg.c"]


def test_an_http_to_storage_import_is_found(tmp_path: Path) -> None:
    graph = _script()
    package = _package(tmp_path, {
        "http/__init__.py": "", "http/reads.py": "from ..storage.store import Store\n",
        "storage/__init__.py": "", "storage/store.py": "Store = 1\n",
    })
    assert graph.problems(graph.build_graph(package), [("pkg.http", "pkg.storage")]) == [
        "forbidden import: pkg.http.reads -> pkg.storage.store"
    ]
