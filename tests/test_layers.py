"""metarl's modules import each other as a tower: no circles, also not through imports inside functions.

The package's `__init__` (a lazy façade over the public names) and the command line (`cli`,
`__main__`) sit on top and are left out: nothing imports them.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metarl"
TOP = {"metarl", "metarl.cli", "metarl.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every metarl module `path` imports, at the top or inside a function (TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("metarl", "envs"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("metarl", "envs")}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            # `from metarl.outer.trpo import X` depends on metarl.outer.trpo (and its package's __init__).
            targets.add(imported)
            if "." in imported and imported.rsplit(".", 1)[0] in modules:
                targets.add(imported.rsplit(".", 1)[0])
        edges[name] = {t for t in targets if t != name and t not in ("metarl",)}
    return edges


def test_the_library_never_imports_the_envs_package():
    offenders = {m: sorted(t for t in ts if t.split(".")[0] == "envs") for m, ts in graph().items()}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_no_module_imports_one_that_imports_it_back():
    edges = {m: ts for m, ts in graph().items() if m not in TOP}
    edges = {m: {t for t in ts if t in edges} for m, ts in edges.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(path[path.index(module) :] + [module])
            return
        visiting.add(module)
        for target in sorted(edges[module]):
            visit(target, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    assert cycles == []


def test_nothing_imports_the_top():
    importers = {m: sorted(ts & TOP) for m, ts in graph().items() if m not in TOP and ts & TOP}
    assert importers == {}
