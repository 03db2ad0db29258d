"""The public surface: what ``gsa_search`` exports, and the one-way imports between the layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gsa_search

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_exports_what_a_user_needs():
    for name in ("train", "Recipe", "load_dataset", "count_flops", "measure_latency", "create_model", "build_model",
                 "register_backbone", "TrialConfig", "run_trial", "GSAConfig", "create_block"):
        assert name in gsa_search.__all__, name
    for name in gsa_search.__all__:
        assert hasattr(gsa_search, name), name
    assert sorted(gsa_search.__all__) == sorted(set(gsa_search.__all__))


def test_internals_are_not_public():
    import gsa_search.blocks.gsa as gsa_module

    assert "window_path" not in gsa_module.__all__ and "relative_to_absolute" not in gsa_module.__all__
    for module in (gsa_search,):
        assert not [n for n in module.__all__ if n.startswith("_")]


def _imports(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_imports_only_go_downward():
    library = _imports(ROOT / "gsa_search")
    assert not library & {"optuna", "ray", "runners", "search_spaces"}
    assert not _imports(ROOT / "search_spaces") & {"runners", "ray"}


def test_importing_the_library_loads_neither_optuna_nor_ray():
    code = "import sys, gsa_search; print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_no_exported_name_hides_a_submodule():
    import importlib
    import inspect
    import pkgutil

    for info in pkgutil.iter_modules(gsa_search.__path__):
        if info.name in gsa_search.__all__:
            assert inspect.ismodule(getattr(gsa_search, info.name)), info.name
        module = importlib.import_module(f"gsa_search.{info.name}")
        assert inspect.ismodule(module)
