"""Code versions: the short hash a rule carries in its params, so editing the code that decides
its results reruns it (Snakemake's params trigger), and editing anything else does not.

`code_version(*modules)` hashes the named kneurons modules and every kneurons module they
import, transitively: top-level and function-level imports, absolute and relative ones. A
module also depends on the `__init__.py` of each package above it (Python runs them first);
a package named or imported as a whole stands for all its modules, recursively. The source
is read from the installed (editable) package, not from a copy of the workflow.

Left out (`UNHASHED`): modules that decide no number. Their effect on results, where they
have one, travels in the params (the settings' values) or is checked by
`tests/test_code_hash.py`, which edits every module in turn and checks which rules rerun.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

PACKAGE = "kneurons"

UNHASHED = {
    "__init__": "the package's __init__: its version string only",
    "codehash": "computes these hashes; imported by no step",
    "config": "schema checks and canonical values: its effect is on the params",
    "errors": "the UserError class: messages",
    "io": "atomic writes and file reading",
    "progress": "progress lines in the logs",
    "settings": "dataclass declarations: the values travel in the params",
    "workflow": "the dispatcher: logging, threads, one call of the step",
}


@cache
def package_dir() -> Path:
    """Where the installed kneurons package lives."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the kneurons package is not installed: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations)))


def _path(name: str) -> Path:
    return package_dir().joinpath(*name.split(".")) if name else package_dir()


def is_package(name: str) -> bool:
    return (_path(name) / "__init__.py").is_file()


def exists(name: str) -> bool:
    return is_package(name) or _path(name).with_suffix(".py").is_file()


def module_file(name: str) -> Path:
    """The source of kneurons module `name` (dotted below the package: `data.tables`,
    `data.__init__`; a package named as a whole: its `__init__.py`)."""
    return _path(name) / "__init__.py" if is_package(name) else _path(name).with_suffix(".py")


def all_modules() -> list[str]:
    """Every kneurons source file as a module name, dotted below the package; a package's own
    file is `<package>.__init__` (the package's: `__init__`)."""
    return [
        ".".join(path.relative_to(package_dir()).with_suffix("").parts)
        for path in sorted(package_dir().rglob("*.py"))
    ]


def _imported(name: str, node: ast.ImportFrom | ast.Import) -> set[str]:
    """The kneurons modules (dotted below the package) that one import statement names."""
    if isinstance(node, ast.Import):
        return {
            alias.name.removeprefix(PACKAGE + ".")
            for alias in node.names
            if alias.name.startswith(PACKAGE + ".")
        }
    if node.level:  # relative: from the module's own package upwards
        here = name.split(".")[:-1]
        base_parts = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        base = ".".join([*base_parts, *(node.module.split(".") if node.module else [])])
    elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
        base = node.module.removeprefix(PACKAGE).removeprefix(".")
    else:
        return set()
    found = set()
    for alias in node.names:  # `from kneurons.x import y`: y may be a module
        sub = f"{base}.{alias.name}" if base else alias.name
        found.add(sub if exists(sub) else base)
    return found


@cache
def direct_dependencies(name: str) -> frozenset[str]:
    """What module `name` needs: what it imports and the `__init__` of each package above it;
    a package named as a whole needs every module in it."""
    if is_package(name):
        found = {m for m in all_modules() if m.startswith(name + ".")}
        return frozenset(m for m in found if m not in UNHASHED)
    found = set()
    for node in ast.walk(ast.parse(module_file(name).read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= _imported(name, node)
    parts = name.split(".")
    found.update(".".join([*parts[:i], "__init__"]) for i in range(1, len(parts)))
    return frozenset(m for m in found - {name} if m not in UNHASHED)


def dependencies(*names: str) -> list[str]:
    """`names` and every hashed kneurons module they need, transitively, sorted."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            if not exists(name):
                raise ModuleNotFoundError(f"no module kneurons.{name}")
            seen.add(name)
            todo.extend(direct_dependencies(name))
    return sorted(seen)


@cache
def code_version(*names: str) -> str:
    """Short hash of the source of modules `names` and of the modules they need."""
    digest = hashlib.sha256()
    modules = dependencies(*names)
    for name in modules:
        digest.update(name.encode() + b"\0")
        if not is_package(name):  # a package's own file is its `__init__` entry
            digest.update(module_file(name).read_bytes())
    return f"{'+'.join(names)}:{digest.hexdigest()[:12]}"


@cache
def file_sha256(path: str) -> str:
    """The content hash of a user's file (it stands in for the path in the params)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
