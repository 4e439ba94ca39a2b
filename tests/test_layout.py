"""The package's import graph runs one way: the adapter (``logger``) on delivery, delivery
on storage and transport, the command line on top of everything, the server apart (with
the dashboard's page, which reads nothing but its own files); the pure record, event and
meter logic at the bottom, importing none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "litellm_openmeter"

# What each part may import from the package (besides itself).
ALLOWED = {
    "pure": {"pure"},
    "delivery": {"pure"},
    "adapter": {"pure", "delivery"},
    "dashboard": set(),
    "server": {"pure", "dashboard"},
    "cli": {"pure", "delivery", "adapter", "server"},
    "face": {"pure", "adapter"},  # the adapter lazily, on first use
}


def part(module: str) -> str:
    head = module.split(".")[0]
    if head in ("delivery", "server", "cli", "dashboard"):
        return head
    if head == "logger":
        return "adapter"
    if head == "__init__":
        return "face"
    return "pure"


def imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Modules of the package that ``path`` imports, at its top or inside functions."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                found.append((".".join(target), node.lineno))
            else:
                found.extend((alias.name, node.lineno) for alias in node.names)
    return found


MODULES = sorted(
    (path, path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."))
    for path in PACKAGE.rglob("*.py")
)


@pytest.mark.parametrize(("path", "module"), MODULES, ids=[module for _, module in MODULES])
def test_imports_run_one_way(path: Path, module: str) -> None:
    mine = part(module)
    for target, line in imports(path, module):
        theirs = part(target)
        assert theirs == mine or theirs in ALLOWED[mine], (
            f"{module} ({mine}) imports {target} ({theirs}) at line {line}"
        )
