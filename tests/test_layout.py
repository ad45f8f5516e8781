"""The package layout: every module imports on its own in a fresh interpreter, module-level imports form no circle,
every `sshpe` import in the repository names a module and a name that exist, the pure modules import nothing from
sshpe, and pyproject.toml lists every package."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PKG = REPO / "sshpe"
PURE = ("sshpe.evaluation.codec", "sshpe.geometry")


def _module_name(path: Path) -> str:
    """Dotted name of a file under sshpe/ or cli/ (cli/ ships as `sshpe._cli`)."""
    root, prefix = (PKG, ("sshpe",)) if path.is_relative_to(PKG) else (REPO / "cli", ("sshpe", "_cli"))
    parts = (*prefix, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> file."""
    files = [*PKG.rglob("*.py"), *(REPO / "cli").rglob("*.py")]
    return {_module_name(f): f for f in sorted(files) if "__pycache__" not in f.parts}


def _sshpe_imports(tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every absolute `sshpe` import in `tree`, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "sshpe"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sshpe":
            found += [(node.module, a.name, node.lineno) for a in node.names]
    return found


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run when a module is imported: the body, top-level `if`/`try`/`with` blocks and class
    bodies, but not function bodies nor `if TYPE_CHECKING:` blocks."""
    out = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out += _module_level(node.orelse)
            continue
        out.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef, ast.ExceptHandler)) and inner:
                out += _module_level(inner)
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module -> the sshpe modules its import-time statements import (`from a import b` names module a.b when b is a
    module, else a)."""
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        body = _module_level(ast.parse(path.read_text(), str(path)).body)
        targets = set()
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for module, imported, _ in _sshpe_imports(stmt):
                    sub = f"{module}.{imported}"
                    targets.add(sub if imported and sub in sources else module)
        graph[name] = targets - {name}
    return graph


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt) and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_circle_finder_finds_circles():
    assert _find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_form_no_circle():
    graph = _import_graph()
    assert {"sshpe.evaluation.predict", "sshpe.inference.pose_model", "sshpe.data.readers.mpii"} <= set(graph)
    assert "sshpe.evaluation.codec" in graph["sshpe.views"]  # the graph sees real edges
    circle = _find_circle(graph)
    assert circle is None, f"import circle: {' -> '.join(circle)}; move the import into the function that needs it"


# Forks one child per module from a parent that has imported the third-party libraries (not sshpe), so every
# module is the first sshpe module its interpreter imports, at the cost of a fork.
_FIRST_IMPORT = """
import importlib, json, os, sys, traceback
import accelerate, cv2, numpy, pycocotools.coco, pydantic, rich, scipy.io, timm, torch, typer, webdataset, yaml
assert not [m for m in sys.modules if m.split(".")[0] == "sshpe"]
failed = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc(limit=-3).encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    if os.waitpid(pid, 0)[1] != 0:
        failed[name] = err or "the child died"
print(json.dumps(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(_sources())
    res = subprocess.run([sys.executable, "-c", _FIRST_IMPORT, *names], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"import {n} failed:\n{e}" for n, e in failed.items())


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_nothing_from_sshpe(module):
    path = _sources()[module]
    tree = ast.parse(path.read_text(), str(path))
    relative = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative, f"{path}: relative imports at lines {relative}"
    assert _sshpe_imports(tree) == [], f"{path} is pure math: it must not import sshpe modules"


def _unresolved(path: Path) -> list[str]:
    """`file:line: what` for every `sshpe` import in `path` (function-level ones too) whose module or name does not
    exist."""
    missing = []
    for module, imported, line in _sshpe_imports(ast.parse(path.read_text(), str(path))):
        where = f"{path}:{line}"
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(f"{where}: no module {module}")
            continue
        submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{imported}") is not None
        if imported and not hasattr(mod, imported) and not submodule:
            missing.append(f"{where}: {module} has no {imported!r}")
    return missing


def test_unresolved_names_stale_paths(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text(
        "def f():\n    from sshpe.evaluate import rescore\n    from sshpe.evaluation.coco_ap import nope\n"
        "    from sshpe.evaluation.coco_ap import rescore\n    from sshpe import geometry, load_model\n"
    )
    assert _unresolved(stale) == [
        f"{stale}:2: no module sshpe.evaluate",
        f"{stale}:3: sshpe.evaluation.coco_ap has no 'nope'",
    ]


def test_every_sshpe_import_in_the_repository_resolves():
    """Function-level imports too: a moved module breaks them only when the function runs."""
    files = [*PKG.rglob("*.py"), *(REPO / "cli").rglob("*.py"), *(REPO / "tests").glob("*.py")]
    files += [*(REPO / "bench").glob("*.py")]
    missing = [m for f in sorted(files) for m in _unresolved(f)]
    assert not missing, "\n".join(missing)


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {_module_name(p) for p in [*PKG.rglob("__init__.py"), REPO / "cli" / "__init__.py"]}
    assert set(config["packages"]) == packages
