import ast
import sys
from pathlib import Path

import minivlm.data

ALLOWED_ROOTS = {"numpy", "PIL", "minivlm"}


def test_data_layer_imports_only_numpy_pillow_stdlib_and_itself():
    for path in Path(minivlm.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in ALLOWED_ROOTS or root in sys.stdlib_module_names, (
                    f"{path.name}: {name}"
                )
                if root == "minivlm":
                    assert name.startswith("minivlm.data"), (
                        f"{path.name} imports the engine: {name}"
                    )
