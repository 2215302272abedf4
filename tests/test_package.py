"""Package surface: every public module re-exported, every module's __all__ complete and sorted."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import steadygrad

LIBRARY_MODULES = sorted(
    m.name
    for m in pkgutil.iter_modules(steadygrad.__path__)
    if not m.name.startswith("_") and m.name != "cli"
)


def test_root_all_lists_the_core_modules() -> None:
    assert steadygrad.__all__ == sorted(steadygrad.__all__)
    for name in ("activations", "checkpoint", "data", "errors", "init", "models", "nn", "train"):
        assert name in steadygrad.__all__ and hasattr(steadygrad, name)


def test_each_module_all_is_complete() -> None:
    for name in LIBRARY_MODULES:
        module = importlib.import_module(f"steadygrad.{name}")
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"steadygrad.{name} has no __all__"
        public = {
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", "").startswith(f"steadygrad.{name}")
        }
        missing = public - set(exported)
        assert not missing, f"steadygrad.{name}.__all__ lacks {sorted(missing)}"


def test_library_never_imports_the_cli() -> None:
    import ast
    from pathlib import Path

    root = Path(steadygrad.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert "steadygrad.cli" not in node.module, path
            if isinstance(node, ast.Import):
                assert all("steadygrad.cli" not in a.name for a in node.names), path
