"""The layers, stated once: each module imports only from its own layer or those below it.

    core ← config ← sources ← pipeline ← exposition ← service

A new module must be placed in LAYERS (the test fails until it is); an import that points up, even one
inside a function, fails here with the offending line.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[2] / "exporter"

LAYERS = {
    # pure data and helpers: what everything may use
    "core": (
        "__init__",
        "catalogue",
        "clock",
        "observation",
        "promparse",
        "passthrough",
        "hostinfo",
        "logsetup",
        "procinfo",
        "derive",
    ),
    "config": ("config", "webconfig"),
    "sources": ("sources",),  # fetch + parse into an Observation
    "pipeline": ("poller", "state", "status", "join"),  # polling, derived state, joins between targets
    "exposition": ("samples", "text", "openmetrics", "debugview"),  # sample stream and renderers
    "service": ("app", "server", "cli", "__main__", "docgen"),  # wiring, HTTP, the command line, tools
}
ORDER = list(LAYERS)


def layer_of(module: str) -> str:
    """module: dotted, relative to the package ("sources.vllm", "derive.maths", "__init__")."""
    for layer, members in LAYERS.items():
        if module in members or module.split(".")[0] in members:
            return layer
    raise AssertionError(f"exporter/{module.replace('.', '/')}.py is in no layer: add it to LAYERS in {__file__}")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        package = parts[:-1]
        name = ".".join(parts[:-1] + ((parts[-1],) if parts[-1] != "__init__" else ())) or "__init__"
        yield name, package, path


def imports(path: pathlib.Path, package: tuple[str, ...]):
    """(line, imported module relative to the package) for every import of the package in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)] if node.level > 1 else package)
            if node.module:
                yield node.lineno, ".".join(base + node.module.split(".")) or "__init__"
            else:  # from . import x / from .. import x
                for alias in node.names:
                    yield node.lineno, ".".join(base + [alias.name])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("exporter"):
            yield node.lineno, node.module.removeprefix("exporter").lstrip(".") or "__init__"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("exporter."):
                    yield node.lineno, alias.name.removeprefix("exporter.")


def resolve(target: str) -> str:
    """An imported name may be a module or a name inside one (`from . import __version__`)."""
    while target and not (PACKAGE / (target.replace(".", "/") + ".py")).exists():
        if (PACKAGE / target.replace(".", "/") / "__init__.py").exists():
            return target
        target = target.rpartition(".")[0]
    return target or "__init__"


@pytest.mark.parametrize("name, package, path", list(modules()), ids=lambda v: str(v))
def test_each_module_imports_only_its_layer_or_below(name, package, path):
    mine = ORDER.index(layer_of(name))
    for line, target in imports(path, package):
        theirs = layer_of(resolve(target))
        assert ORDER.index(theirs) <= mine, (
            f"exporter/{path.relative_to(PACKAGE)}:{line} imports {target} ({theirs}) from layer "
            f"{layer_of(name)}: an edge pointing up"
        )


def test_the_check_catches_an_upward_import(tmp_path):
    """The check itself can fail: config importing a source is an upward edge."""
    source = tmp_path / "config.py"
    source.write_text("def f():\n    from .sources import engine_specs\n")
    (found,) = list(imports(source, ()))
    assert found == (2, "sources") and ORDER.index(layer_of(resolve(found[1]))) > ORDER.index(layer_of("config"))
