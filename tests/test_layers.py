"""The package's layers import only downward, and the package stays inside itself.

Each top-level module or sub-package of minivlm has a layer (LAYERS); a module may
import minivlm modules of its own layer or lower, never higher. `data/` stands apart:
it imports nothing of the engine (tests/data/test_data_imports.py checks that), so
the engine's layers may use it from anywhere.
"""

import ast
import sys
from pathlib import Path

import minivlm

PACKAGE = Path(minivlm.__file__).parent

# lower number = lower layer; names on one line share a layer
LAYERS = {
    "backend": 0,
    "data": 0,
    "autograd": 1,
    "random": 1,
    "kernels_cpu": 2,
    "kernels_cuda": 2,
    "functional": 2,
    "gradcheck": 2,
    "nn": 3,
    "optim": 3,
    "models": 4,
    "checkpoint": 5,
    "generate": 5,
    "metrics": 5,
    "viz": 5,
    "evaluate": 6,
    "evaluate_folder": 6,
    "train": 7,
    "checks": 8,
    "bench": 9,
    "cli": 9,
}
# third-party packages the package may import (cupy and torch only lazily, where used)
THIRD_PARTY = {
    "numpy", "PIL", "safetensors", "tqdm", "cupy", "cupyx", "torch", "threadpoolctl", "mpi4py"
}  # fmt: skip


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        yield path, name, is_package


def _imports(path: Path, name: str, is_package: bool):
    """(line, absolute module name) for every import in the file."""
    package = name if is_package else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                yield node.lineno, ".".join(base + node.module.split("."))
            else:  # from .. import functional, random
                for alias in node.names:
                    yield node.lineno, ".".join(base + [alias.name])


def _layer_name(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "minivlm" else None


def test_every_top_level_module_and_package_has_a_layer():
    names = {_layer_name(name) for _, name, _ in _modules()} - {None, "__main__"}
    assert names <= set(LAYERS), f"give these a layer in LAYERS: {sorted(names - set(LAYERS))}"


def test_each_module_imports_only_its_own_layer_or_below():
    wrong = []
    for path, name, is_package in _modules():
        own = _layer_name(name)
        if own is None or own == "__main__":  # minivlm/__init__.py and __main__ re-export
            continue
        for line, target in _imports(path, name, is_package):
            other = _layer_name(target)
            if other in LAYERS and other != "data" and LAYERS[other] > LAYERS[own]:
                wrong.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({own}, layer {LAYERS[own]}) "
                    f"imports {target} ({other}, layer {LAYERS[other]})"
                )
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_the_package_never_reaches_outside_itself():
    wrong = []
    for path, name, is_package in _modules():
        source = path.read_text(encoding="utf-8")
        if "sys.path" in source:
            wrong.append(f"{path.name}: edits or reads sys.path")
        for line, target in _imports(path, name, is_package):
            root = target.split(".")[0]
            if root not in THIRD_PARTY | {"minivlm"} | set(sys.stdlib_module_names):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)
