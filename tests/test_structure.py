"""The code's shape: small files, short functions, and layers that only import downwards.

Over ``trainer/``, ``datamodules/`` and ``serve/`` (not tests, not experiments), read with
``ast`` without importing anything:

- no ``.py`` file is over ``MAX_FILE_LINES`` lines;
- no function or method is over ``MAX_FUNCTION_LINES`` lines (from its ``def`` to its last line);
- ``datamodules`` imports nothing from ``trainer`` or ``serve``; ``trainer`` imports ``serve``
  only inside functions of ``trainer/cli*.py`` (the ``serve`` and ``keys`` subcommands).

Exceptions are listed by name with the reason in ``DATA_TABLES`` (long because they are data).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "datamodules", "serve")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80

# "path" (a file) or "path::Qualified.name" (a function) → why it may be longer. None today.
DATA_TABLES: dict[str, str] = {}


def python_files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def long_files(root: Path, limit: int = MAX_FILE_LINES) -> dict[str, int]:
    """``path → lines`` of the files over ``limit`` lines."""
    sizes = {_key(p, root): len(p.read_text().splitlines()) for p in python_files(root)}
    return {k: n for k, n in sizes.items() if n > limit}


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, name + ".")
        else:
            yield from _functions(node, prefix)


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``path::Qualified.name → lines`` of the functions over ``limit`` lines."""
    found = {}
    for p in python_files(root):
        for name, node in _functions(ast.parse(p.read_text(), str(p))):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                found[f"{_key(p, root)}::{name}"] = n
    return found


def _imports(path: Path, root: Path):
    """(imported module, inside a function) for every import of ``path``, relative ones
    resolved against its package."""
    package = path.relative_to(root).parts[:-1]

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, in_function
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else ()
                module = ".".join([*base, *([child.module] if child.module else [])])
                yield module, in_function
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), False)


def upward_imports(root: Path) -> list[str]:
    """The imports that point up the layers (datamodules → trainer/serve; trainer → serve
    outside functions of trainer/cli*.py)."""
    bad = []
    for p in python_files(root):
        key = _key(p, root)
        layer = key.split("/")[0]
        for module, in_function in _imports(p, root):
            top = module.split(".")[0]
            if layer == "datamodules" and top in ("trainer", "serve"):
                bad.append(f"{key} imports {module}")
            elif layer == "trainer" and top == "serve":
                lazy_in_cli = in_function and Path(key).name.startswith("cli")
                if not lazy_in_cli:
                    where = "inside a function" if in_function else "at module level"
                    bad.append(f"{key} imports {module} {where}")
    return bad


def test_no_file_is_over_the_limit():
    over = {k: n for k, n in long_files(ROOT).items() if k not in DATA_TABLES}
    assert not over, (
        f"files over {MAX_FILE_LINES} lines: {over}; split them into modules by concern"
    )


def test_no_function_is_over_the_limit():
    over = {k: n for k, n in long_functions(ROOT).items() if k not in DATA_TABLES}
    assert not over, (
        f"functions over {MAX_FUNCTION_LINES} lines: {over}; split them into named steps"
    )


def test_layers_import_only_downwards():
    assert upward_imports(ROOT) == []


def test_every_exception_is_still_needed():
    """An allow-list entry whose file or function is now short enough (or gone) is removed."""
    over = long_files(ROOT) | long_functions(ROOT)
    stale = sorted(k for k in DATA_TABLES if k not in over)
    assert not stale, f"remove these entries from DATA_TABLES, they are within limits: {stale}"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path):
    """A small tree within every limit, that each test below breaks in one way."""
    for pkg in PACKAGES:
        _write(tmp_path, f"{pkg}/__init__.py", "")
    _write(tmp_path, "trainer/cli_serve.py", "def cmd():\n    from serve.cli import run\n")
    _write(tmp_path, "datamodules/x.py", "from .errors import UserError\n")
    _write(tmp_path, "serve/x.py", "import trainer\nfrom datamodules import errors\n")
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    _write(tmp_path, "trainer/f.py", "class A:\n    def f(self):\n" + body)  # 80 lines
    assert not long_files(tmp_path) and not long_functions(tmp_path)
    assert upward_imports(tmp_path) == []
    return tmp_path


def test_the_checks_catch_a_long_file(tree):
    _write(tree, "serve/big.py", "x = 1\n" * (MAX_FILE_LINES + 1))
    assert long_files(tree) == {"serve/big.py": MAX_FILE_LINES + 1}


def test_the_checks_catch_a_long_method(tree):
    text = (tree / "trainer/f.py").read_text()
    _write(tree, "trainer/f.py", text + "        y = 0\n")
    assert long_functions(tree) == {"trainer/f.py::A.f": MAX_FUNCTION_LINES + 1}


@pytest.mark.parametrize(
    "rel, text",
    [
        ("datamodules/a.py", "from trainer.registry import setup_mlflow\n"),
        ("datamodules/a.py", "def f():\n    import serve.app\n"),
        ("datamodules/sub/a.py", "from ...serve import app\n"),
        ("trainer/a.py", "from serve import cli\n"),
        ("trainer/a.py", "def f():\n    from serve.cli import run_serve\n"),
        ("trainer/cli.py", "from serve.cli import run_serve\n"),
    ],
)
def test_the_checks_catch_an_upward_import(tree, rel, text):
    _write(tree, rel, text)
    assert len(upward_imports(tree)) == 1
