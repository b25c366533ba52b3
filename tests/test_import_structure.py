"""The package's layering, checked on the source: a lower layer never imports a higher one, and no module imports a
private name (``_name``) from another module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "mossvl"
# Each layer may import only the layers listed for it (and itself, and the top-level helper modules).
ALLOWED = {
    "model": set(),
    "processing": set(),
    "data": {"processing"},
    "inference": {"model", "processing", "quantization"},
    "training": {"model", "processing"},
    "evaluation": {"inference", "processing"},
    "quantization": {"model", "processing"},
    "serving": {"inference", "model", "processing"},
    "integrations": {"inference", "processing", "model"},
    "cli": {
        "inference",
        "model",
        "processing",
        "training",
        "evaluation",
        "data",
        "serving",
        "quantization",
        "integrations",
    },
}
HELPERS = {"constants", "errors", "checkpoint"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.relative_to(PACKAGE).with_suffix("").parts


def imported(path: Path, parts: tuple[str, ...]):
    """(absolute module parts, imported names) of every mossvl import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    package = ("mossvl", *parts[:-1]) if parts[-1] != "__init__" else ("mossvl", *parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module.split(".") if node.module else ()))
            elif node.module and node.module.split(".")[0] == "mossvl":
                target = tuple(node.module.split("."))
            else:
                continue
            yield target, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mossvl":
                    yield tuple(alias.name.split(".")), []


@pytest.mark.parametrize(("path", "parts"), list(modules()), ids=lambda value: str(value))
def test_layers_import_only_lower_layers(path, parts):
    layer = parts[0] if len(parts) > 1 else None
    if layer not in ALLOWED:
        return  # the package root wires the layers together
    for target, _ in imported(path, parts):
        other = target[1] if len(target) > 1 else None
        if other is None or other == layer or other in HELPERS:
            continue
        assert other in ALLOWED[layer], f"{'/'.join(parts)} ({layer}) imports mossvl.{other}"


@pytest.mark.parametrize(("path", "parts"), list(modules()), ids=lambda value: str(value))
def test_no_module_imports_a_private_name(path, parts):
    for target, names in imported(path, parts):
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        assert not private, f"{'/'.join(parts)} imports private {private} from {'.'.join(target)}"


def test_the_model_layer_imports_no_front_end():
    front_ends = {"inference", "serving", "cli", "training", "evaluation"}
    for path, parts in modules():
        if parts[0] == "model":
            for target, _ in imported(path, parts):
                assert len(target) < 2 or target[1] not in front_ends, f"{'/'.join(parts)} imports {target}"
