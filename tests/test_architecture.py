"""The architecture of docs/architecture.md, checked on the source: every module in one layer,
imports only downward, no import cycle, the toy data used only where the page allows, no function
over 40 lines, and the page linked and listed where a reader looks.

The imports are read from the source with ``ast`` (not by importing), module-level and inside
functions, and resolved to the module they name (``from . import plot`` is refdiff.plot,
``from toy_data import images`` is toy_data.images, ``from .arrays import as_real`` is
refdiff.arrays).
"""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("refdiff", "toy_data")
MAX_FUNCTION_LINES = 40  # docs/architecture.md, "Style": from the def line to the last, docstring included
LAZY_IMPORTERS = {"cli"}  # "No import inside a function except in cli"
TOY_DATA_USERS = {"sweep", "verify"}  # besides the apps and toy_data itself ("The toy data are for the apps")


def modules():
    """{dotted name: path} of every module of refdiff and toy_data."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def layers():
    """The table of "## The layers": [(layer name, {module key})] in order, a module key being a
    refdiff module's short name or "toy_data" (the whole package)."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    table = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table.append((cells[0], set(re.findall(r"`([a-z_]+)`", cells[1]))))
    return table


def key_of(module):
    """The layer table's name for a dotted module: "toy_data" for the package and its modules."""
    return "toy_data" if module.split(".")[0] == "toy_data" else module.split(".", 1)[1] if "." in module else module


def imports(path, module):
    """[(target module, inside a function?)] of refdiff / toy_data imports in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    known, found = modules(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            base = ".".join(filter(None, [base, node.module]))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found += [(t, id(node) in in_function) for t in targets if t.split(".")[0] in PACKAGES and t in known]
    return found


def graph(module_level_only=True):
    """{module: {modules it imports}} over refdiff and toy_data."""
    return {m: {t for t, inner in imports(p, m) if not (inner and module_level_only) and t != m}
            for m, p in modules().items()}


def test_every_module_sits_in_exactly_one_layer():
    table = layers()
    assert [name for name, _ in table] == ["core", "exact models", "learned models", "sampling", "analysis", "apps"]
    listed = [key for _, keys in table for key in keys]
    assert len(listed) == len(set(listed)), f"a module is in two layers: {sorted(listed)}"
    present = {key_of(m) for m in modules() if m != "refdiff"}
    assert set(listed) == present, f"in the page, not in the tree: {set(listed) - present}; " \
                                   f"in the tree, not in the page: {present - set(listed)}"


def test_imports_point_downward():
    rank = {key: i for i, (_, keys) in enumerate(layers()) for key in keys}
    upward = [(m, t) for m, p in modules().items() if m != "refdiff" for t, _ in imports(p, m)
              if t != "refdiff" and rank[key_of(t)] > rank[key_of(m)]]
    assert upward == [], f"imports from a later layer (docs/architecture.md): {upward}"


def test_only_the_apps_sweep_and_verify_use_the_toy_data():
    apps = dict(layers())["apps"]
    users = sorted({key_of(m) for m, p in modules().items() for t, _ in imports(p, m)
                    if key_of(t) == "toy_data" and key_of(m) != "toy_data"})
    assert set(users) <= apps | TOY_DATA_USERS, f"library modules importing toy_data: {set(users) - apps - TOY_DATA_USERS}"


def test_toy_data_imports_only_core_and_the_oracle():
    allowed = dict(layers())["core"] | {"oracle", "toy_data"}
    used = {key_of(t) for m, p in modules().items() if key_of(m) == "toy_data" for t, _ in imports(p, m)}
    assert used <= allowed, used - allowed


def test_no_import_inside_a_function_but_in_cli():
    lazy = sorted({key_of(m) for m, p in modules().items() for _, inner in imports(p, m) if inner})
    assert set(lazy) <= LAZY_IMPORTERS, lazy


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module level", "with function-level imports"])
def test_no_import_cycle(module_level_only):
    edges, state, cycle = graph(module_level_only), {}, []

    def visit(node, stack):  # depth-first search; state 1 = on the stack, 2 = done
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycle == [], f"import cycles: {cycle}"


def test_no_function_is_longer_than_40_lines():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == [], long


def test_the_package_docstring_lists_every_module():
    doc = ast.get_docstring(ast.parse((ROOT / "refdiff" / "__init__.py").read_text(encoding="utf-8")))
    missing = [m for m in modules() if m.startswith("refdiff.") and not re.search(rf"\b{m.split('.')[1]}\b", doc)]
    assert missing == [], missing


def test_the_page_is_linked_from_both_readmes_and_the_old_names_are_gone():
    for readme in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        assert "architecture.md" in readme.read_text(encoding="utf-8"), readme
    stale = [str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *ROOT.glob("refdiff/*.py"),
                                                *ROOT.glob("toy_data/*.py"), *ROOT.glob("tests/*.py"),
                                                *ROOT.glob("docs/*.md"), *ROOT.glob("docs/*.py")]
             if p.name != "test_architecture.py" and re.search(r"\b(DESIGN|STYLE)\.md", p.read_text(encoding="utf-8"))]
    assert stale == [], f"references to files outside the repository: {stale}"
