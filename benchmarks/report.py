"""The JSON report of a benchmark: checked against benchmarks/schema.json, then written.

`validate` understands the part of JSON Schema that schema.json uses: type (one name
or a list), enum, const, minimum, required, properties, additionalProperties, items,
oneOf and local references "#/$defs/<name>".
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(instance, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Every way `instance` breaks `schema`, as 'path: what is wrong' lines ([] if none)."""
    root = schema if root is None else root
    if "$ref" in schema:
        return validate(instance, _resolve(schema["$ref"], root), root, path)
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_TYPES[name](instance) for name in names):
            got = f"{type(instance).__name__} {instance!r:.60}"
            return [f"{path}: expected {' or '.join(names)}, got {got}"]
    errors = []
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {instance!r:.60}")
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: expected one of {schema['enum']}, got {instance!r:.60}")
    if "minimum" in schema and _TYPES["number"](instance) and instance < schema["minimum"]:
        errors.append(f"{path}: expected >= {schema['minimum']}, got {instance}")
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not validate(instance, s, root, path)]
        if len(matches) != 1:
            errors.append(
                f"{path}: matches {len(matches)} of the oneOf schemas, expected exactly 1"
            )
    if isinstance(instance, dict):
        errors += _validate_object(instance, schema, root, path)
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            errors += validate(item, schema["items"], root, f"{path}[{index}]")
    return errors


def _validate_object(instance: dict, schema: dict, root: dict, path: str) -> list[str]:
    errors = [
        f"{path}: missing key {key!r}" for key in schema.get("required", []) if key not in instance
    ]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in instance.items():
        if key in properties:
            errors += validate(value, properties[key], root, f"{path}.{key}")
        elif extra is False:
            errors.append(f"{path}: unexpected key {key!r}")
        elif isinstance(extra, dict):
            errors += validate(value, extra, root, f"{path}.{key}")
    return errors


def _resolve(reference: str, root: dict) -> dict:
    prefix = "#/$defs/"
    if not reference.startswith(prefix):
        raise ValueError(f"schema $ref must look like '{prefix}<name>', got {reference!r}")
    return root["$defs"][reference[len(prefix) :]]


def report_errors(report: dict) -> list[str]:
    """What is wrong with a report, checked against its own benchmark's part of the schema
    (more telling than 'matches 0 of the oneOf schemas')."""
    schema = load_schema()
    part = f"{report.get('benchmark')}_report" if isinstance(report, dict) else None
    if part not in schema["$defs"]:
        return validate(report, schema)
    return validate(report, schema["$defs"][part], schema)


def _finite(value):
    """The report with NaN and inf written as null (JSON has neither)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict, path: str | Path) -> Path:
    """Check `report` against the schema and write it to `path` (directories made)."""
    report = _finite(report)
    errors = report_errors(report)
    if errors:
        raise ValueError(
            "benchmark report does not match benchmarks/schema.json:\n" + "\n".join(errors[:20])
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def status_text(row: dict) -> str:
    """'WRONG: <why>', 'ERROR: <exception>' or 'not available: <why>' for a row not timed."""
    if row["status"] == "unavailable":
        return row["reason"]
    return f"{row['status'].upper()}: {row['reason']}"


def others_share(row: dict) -> float | None:
    """The larger share of the machine that other processes took while the row's forward
    and forward+backward were timed (None where it is not known)."""
    shares = [row[phase]["others_cpu_share"] for phase in ("forward", "forward_backward")]
    return None if None in shares else max(shares)


def command_line(args: argparse.Namespace) -> str:
    """The command that produced `args`: its prefix and the arguments it was given."""
    argv = getattr(args, "argv", None)
    return f"{args.command_prefix} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip()


def log_to_stderr(line: str) -> None:
    """Progress lines go to stderr, so stdout holds only the table."""
    print(line, file=sys.stderr, flush=True)


def run_module(name: str, doc: str, add_arguments, argv: list[str] | None = None) -> int:
    """`python -m benchmarks.NAME`: the same arguments as `minivlm bench NAME`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=doc.split("\n\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    return args.handler(args)
