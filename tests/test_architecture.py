"""The layers of docs/architecture.md hold: no module of runner/ imports one of a layer above
its own, every module has a layer, only models/_litellm.py imports LiteLLM, and only
resolve.py and cli.py reach the plugin registry. Read from the source (AST), so lazy imports
inside functions count too; imports under `if TYPE_CHECKING:` do not."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "runner"
DOC = ROOT / "docs" / "architecture.md"


def layers(doc: Path = DOC) -> list[tuple[str, list[str]]]:
    """(layer, module patterns) from the ```layers block, top layer first."""
    block = re.search(r"```layers\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert block, f"{doc} has no ```layers block"
    rows = []
    for line in block.group(1).splitlines():
        if line.strip():
            name, *patterns = line.split()
            rows.append((name, patterns))
    return rows


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported name) of every runtime import in a file, relative ones made absolute;
    `from x import y` gives both x and x.y (y may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return found


def layer_of(module: str, rows: list[tuple[str, list[str]]]) -> int | None:
    """Index of the module's layer, counted from the bottom."""
    for i, (_, patterns) in enumerate(reversed(rows)):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    return None


def violations(package: Path = PACKAGE, doc: Path = DOC) -> list[str]:
    root = package.parent
    rows = layers(doc)
    names = [name for name, _ in reversed(rows)]
    files = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    problems = [f"{m}: in no layer of {doc.name}" for m in files if layer_of(m, rows) is None]
    for module, path in files.items():
        mine = layer_of(module, rows)
        if mine is None:
            continue
        for line, target in imports(path, root):
            if target not in files or target == module or module.startswith(target + "."):
                continue  # a package of its own is imported with it, whatever its layer
            theirs = layer_of(target, rows)
            if theirs is not None and theirs > mine:
                problems.append(f"{path.relative_to(root)}:{line}: {module} ({names[mine]}) "
                                f"imports {target} ({names[theirs]}), a layer above it")
    return problems


def test_no_module_imports_a_layer_above_its_own() -> None:
    found = violations()
    assert not found, "upward imports (see docs/architecture.md):\n" + "\n".join(found)


def test_every_layer_pattern_names_a_module() -> None:
    files = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for name, patterns in layers():
        for p in patterns:
            assert any(fnmatch.fnmatchcase(m, p) for m in files), f"{name}: {p} matches nothing"


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The check itself can fail: the same rules on a copy where errors.py imports the loop."""
    doc = tmp_path / "architecture.md"
    doc.write_text("```layers\nloop runner.loop\nbase runner.errors\n```\n")
    package = tmp_path / "runner"
    package.mkdir()
    (package / "loop.py").write_text("from .errors import RunnerError\n")
    (package / "errors.py").write_text("def f():\n    from .loop import Run\n")
    found = violations(package, doc)
    assert found == ["runner/errors.py:2: runner.errors (base) imports runner.loop (loop), a "
                     "layer above it"]


@pytest.mark.parametrize("library,allowed", [
    ("litellm", {"runner.models._litellm"}),
    ("runner.plugins", {"runner.resolve", "runner.cli"}),
    ("ray", {"runner.serve.batch_ray"}),  # an optional extra: one module, imported on demand
    ("starlette", {"runner.serve.http"}),
    ("uvicorn", {"runner.serve.http", "runner.serve.mcp"}),
])
def test_who_may_import(library: str, allowed: set[str]) -> None:
    users = {module_name(p) for p in PACKAGE.rglob("*.py")
             if any(t == library or t.startswith(library + ".") for _, t in imports(p))}
    assert users <= allowed, users - allowed


def test_loading_a_spec_loads_no_plugin() -> None:
    """`load_spec` is pure: the spec wing, errors, redaction and the bounded file reader,
    nothing of the plugin world."""
    import subprocess
    import sys

    probe = ("import sys; from runner import load_spec; load_spec('agents/researcher.yaml'); "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('runner'))))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert loaded == {"runner", "runner._files", "runner.errors", "runner.redact", "runner.spec",
                      "runner.spec._yaml", "runner.spec.load", "runner.spec.locate",
                      "runner.spec.schema"}, loaded
