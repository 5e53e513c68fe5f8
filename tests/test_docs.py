"""The docs cannot rot silently, and `minivlm explain` tells the truth.

Docs (docs/**/*.md and README.md): every relative link resolves; every `#L<n>` anchor
lands on the `def` or `class` its link text names; every code block marked
`<!-- quote: PATH -->` still appears line for line in PATH (trailing comments aside);
every `minivlm gradcheck` and `minivlm explain` command they show is one the CLI accepts.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from minivlm.checks import CASES, select
from minivlm.checks import explain as explain_module
from minivlm.checks.explain import (
    FORMULAS,
    add_explain_command,
    compare_elements,
    explain,
    find_case,
)
from minivlm.cli import build_parser
from minivlm.functional.softmax import Softmax

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
FENCED_BLOCK = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)\)")
LINE_ANCHOR = re.compile(r"L(\d+)(?:-L\d+)?")
QUOTE = re.compile(r"<!-- quote: (\S+) -->\n```\w*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _outside_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked (newlines kept, so line numbers stay)."""
    return FENCED_BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _links():
    for doc in DOCS:
        text = _outside_code_blocks(doc.read_text())
        for match in LINK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{doc.relative_to(REPO)}:{line}"
            yield pytest.param(doc, match.group(1), match.group(2), id=where)


def _relative_links():
    return [p for p in _links() if not re.match(r"[a-z]+:", p.values[2])]


@cache
def _definitions(path: Path) -> dict[int, list[str]]:
    """line -> qualified names ('Class.method') of the defs and classes starting there."""
    found: dict[int, list[str]] = {}

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.setdefault(child.lineno, []).append(prefix + child.name)
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return found


def _names(qualified: list[str], name: str) -> bool:
    return any(q == name or q.endswith("." + name) for q in qualified)


@pytest.mark.parametrize(("doc", "text", "target"), _relative_links())
def test_relative_link_resolves_to_an_existing_file(doc, text, target):
    path = target.split("#")[0]
    resolved = (doc.parent / path).resolve() if path else doc
    assert resolved.exists(), (
        f"{doc.relative_to(REPO)}: link [{text}]({target}) points at a missing file"
    )


@pytest.mark.parametrize(
    ("doc", "text", "target"), [p for p in _relative_links() if "#L" in p.values[2]]
)
def test_line_anchor_lands_on_the_def_or_class_the_link_names(doc, text, target):
    path, anchor = target.split("#")
    source = (doc.parent / path).resolve()
    where = f"{doc.relative_to(REPO)}: link [{text}]({target})"
    assert source.suffix == ".py", f"{where}: line anchors are checked only into Python files"
    line = LINE_ANCHOR.fullmatch(anchor)
    assert line, f"{where}: expected an anchor #L<n> or #L<n>-L<m>, got #{anchor}"
    name = text.strip("`")
    definitions = _definitions(source)
    if not _names(definitions.get(int(line.group(1)), []), name):
        now_at = sorted(n for n, names in definitions.items() if _names(names, name))
        pytest.fail(
            f"{where}: line {line.group(1)} holds {definitions.get(int(line.group(1)), 'no def')}, "
            f"not {name}; {name} is defined at line(s) {now_at or 'nowhere'} of {path}"
        )


def _quotes():
    for doc in DOCS:
        for match in QUOTE.finditer(doc.read_text()):
            where = f"{doc.relative_to(REPO)}:{match.group(1)}"
            yield pytest.param(doc, match.group(1), match.group(2), id=where)


def _code(line: str) -> str:
    """A source line without its indentation and trailing comment (a line that is only a
    comment keeps it: a quoted comment must still be in the source)."""
    return re.sub(r"\s+#.*$", "", line.strip())


@pytest.mark.parametrize(("doc", "source", "block"), _quotes())
def test_quoted_code_is_still_in_its_source_file(doc, source, block):
    source_lines = {_code(line) for line in (REPO / source).read_text().splitlines()}
    missing = [_code(line) for line in block.splitlines() if _code(line) not in source_lines | {""}]
    assert not missing, (
        f"{doc.relative_to(REPO)} quotes lines that {source} no longer has: {missing}"
    )


def _commands(program: str):
    """(doc, arguments) for every `minivlm PROGRAM ...` in the docs, in code spans or blocks,
    except syntax summaries with an upper-case placeholder such as `minivlm explain OP`."""
    for doc in DOCS:
        for match in re.finditer(rf"minivlm {program}\b([^`\n]*)", doc.read_text()):
            arguments = shlex.split(match.group(1), comments=True)
            if match.group(1).startswith("`") or not match.group(1).strip():
                continue  # the command's name in prose, not a command line
            if not any(re.fullmatch(r"[A-Z][A-Z_]*", a) for a in arguments):
                where = f"{doc.relative_to(REPO)}:{match.group(1).strip()}"
                yield pytest.param(doc, arguments, id=where)


def _parse(parser: argparse.ArgumentParser, arguments: list[str], where: str) -> argparse.Namespace:
    try:
        return parser.parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{where}: the CLI rejects `minivlm {' '.join(arguments)}`")


@pytest.mark.parametrize(("doc", "arguments"), _commands("gradcheck"))
def test_gradcheck_command_in_the_docs_names_known_cases(doc, arguments):
    where = doc.relative_to(REPO)
    args = _parse(build_parser(), ["gradcheck", *arguments], str(where))
    if not args.model:
        try:
            select(args.ops)
        except ValueError as err:
            pytest.fail(f"{where}: `minivlm gradcheck {' '.join(arguments)}`: {err}")


@pytest.mark.parametrize(("doc", "arguments"), _commands("explain"))
def test_explain_command_in_the_docs_names_a_known_case(doc, arguments):
    where = doc.relative_to(REPO)
    args = _parse(_explain_parser(), ["explain", *arguments], str(where))
    try:
        find_case(args.op)
    except LookupError as err:
        pytest.fail(f"{where}: `minivlm explain {' '.join(arguments)}`: {err}")


def _explain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minivlm")
    add_explain_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_every_backprop_page_ends_with_a_gradcheck_command():
    for page in sorted((REPO / "docs" / "backprop").glob("*.md")):
        last_section = page.read_text().rsplit("\n## ", 1)[-1]
        assert "minivlm gradcheck" in last_section, f"{page.name}: its last section has no check"


# -- minivlm explain ------------------------------------------------------------------------


def test_explain_has_formulas_and_an_existing_page_for_every_checked_function():
    covered = {name for case in CASES for name in case.covers}
    assert covered <= set(FORMULAS), f"no formulas for {sorted(covered - set(FORMULAS))}"
    pages = {f.page for f in FORMULAS.values() if f.page is not None}
    missing = [p for p in pages if not (REPO / "docs" / "backprop" / p).is_file()]
    assert not missing, f"explain points at missing pages {missing}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_explain_prints_formulas_code_and_a_passing_check(case, capsys):
    assert explain(case.name, elements=2) == 0
    out = capsys.readouterr().out
    for name in case.covers:
        assert f"{name}.backward" in out and "\nbackward\n" in out
    assert re.search(r"minivlm/functional/\w+\.py:\d+", out), out
    assert "analytic" in out and "numeric" in out and "result: pass" in out


def test_explain_locations_point_at_the_forward_and_backward_defs(capsys):
    explain("layer_norm", elements=1)
    out = capsys.readouterr().out
    for method in ("forward", "backward"):
        path, line = re.search(rf"LayerNorm\.{method}\s+(\S+):(\d+)", out).groups()
        assert _names(_definitions(REPO / path).get(int(line), []), f"LayerNorm.{method}")


def test_explain_analytic_and_numeric_gradients_agree_element_by_element():
    rows = compare_elements(find_case("attention"), per_input=5)
    assert len(rows) == 15
    worst = max(abs(r.analytic - r.numeric) for r in rows)
    assert worst < 1e-6, f"analytic and numeric attention gradients differ by {worst:.1e}"


def test_explain_fails_with_exit_code_1_when_a_backward_is_wrong(monkeypatch, capsys):
    monkeypatch.setattr(Softmax, "backward", lambda self, dy: dy * 0)
    assert explain("softmax") == 1
    assert "result: FAIL" in capsys.readouterr().out


def test_explain_unknown_op_exits_2_listing_the_known_ones(capsys):
    assert explain("atention") == 2
    err = capsys.readouterr().err
    assert "unknown op 'atention'" in err and "attention" in err and "layer_norm" in err


def test_explain_rejects_a_non_positive_element_count(capsys):
    assert explain("softmax", elements=0) == 2
    assert "elements must be a positive integer, got 0" in capsys.readouterr().err


def test_explain_command_parses_and_runs(capsys):
    args = _explain_parser().parse_args(["explain", "embedding", "--elements", "1"])
    assert args.handler(args) == 0
    assert "Embedding.backward" in capsys.readouterr().out


def test_explain_paths_are_relative_to_the_repository():
    location = explain_module.source_location(Softmax.backward)
    assert location.startswith("minivlm/functional/softmax.py:"), location


ARCHITECTURE = REPO / "docs" / "architecture.md"


@cache
def _tiny_training_graph():
    """The Functions one training forward of preset("tiny") records, loss.creator first."""
    from minivlm.autograd import _topological_order
    from minivlm.data import SceneDataset, collate
    from minivlm.train import Trainer, preset, sequence_loss, target_weights

    trainer = Trainer.create(preset("tiny"))
    data = SceneDataset(trainer.config.data, "iid", 8, 0, tokenizer=trainer.tokenizer)
    batch = collate([data[i] for i in range(8)])
    weights = target_weights(batch.targets, batch.answers)
    loss = sequence_loss(
        trainer.model, batch.images, batch.inputs, batch.targets, "cpu", weights
    )
    return loss, _topological_order(loss.creator)


def _marked_block(marker: str) -> str:
    """The text right after `<!-- marker -->` in architecture.md, up to a blank line."""
    text = ARCHITECTURE.read_text()
    start = text.index(f"<!-- {marker} -->\n") + len(f"<!-- {marker} -->\n")
    return text[start:].split("\n\n", 1)[0]


def test_architecture_page_states_the_creator_chain_the_engine_records():
    loss, _ = _tiny_training_graph()
    chain, fn = [], loss.creator
    while fn is not None and len(chain) < 8:
        chain.append(type(fn).__name__)
        fn = next((t.creator for t in fn.inputs if t.creator is not None), None)
    stated = _marked_block("creator chain: preset tiny, one training forward").splitlines()[1]
    assert stated == " <- ".join(chain), (
        f"docs/architecture.md states the chain\n{stated}\nbut the engine records\n"
        + " <- ".join(chain)
    )


def test_architecture_page_states_the_functions_a_forward_records():
    _, functions = _tiny_training_graph()
    counts = Counter(type(fn).__name__ for fn in functions)
    rows = _marked_block("function counts: preset tiny, one training forward").splitlines()[2:]
    stated = {name.strip(): int(n) for name, n in (row.strip("|").split("|") for row in rows)}
    assert stated.pop("all") == len(functions), f"the forward records {len(functions)}"
    assert stated == dict(counts), f"the forward records {dict(counts)}"


# -- docs/custom_op.md ---------------------------------------------------------------------

CUSTOM_OP = REPO / "docs" / "custom_op.md"


def test_custom_op_page_snippets_run_and_each_mistake_fails():
    from minivlm import GradcheckError

    blocks = re.findall(r"```python\n(.*?)```", CUSTOM_OP.read_text(), re.DOTALL)
    namespace: dict = {}
    for block in blocks[:2]:  # the op and its passing check
        exec(block, namespace)  # noqa: S102 - the page's own code
    mistakes = blocks[2:]
    assert len(mistakes) >= 4
    for block in mistakes:
        with pytest.raises((GradcheckError, RuntimeError)):
            exec(block, namespace)  # noqa: S102


# -- docs/zh ---------------------------------------------------------------------------------


def test_chinese_guide_covers_the_chapters_and_the_two_derivations():
    pages = {p.name for p in (REPO / "docs" / "zh").glob("*.md")}
    assert {"README.md", "attention.md", "layer_norm.md"} <= pages


def test_scaling_page_holds_the_tables_the_script_computes():
    """docs/scaling.md's allreduce figures are benchmarks/scaling_table.py's output, and
    its parameter counts those of the presets' models."""
    import importlib.util

    from minivlm.models import VLM
    from minivlm.train import preset

    spec = importlib.util.spec_from_file_location("scaling", REPO / "benchmarks/scaling_table.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    page = (REPO / "docs/scaling.md").read_text()
    missing = [table.splitlines()[0] for table in scaling.tables() if table not in page]
    assert not missing, f"docs/scaling.md lacks the tables headed {missing}: rerun the script"
    for name, (parameters, batch, _) in scaling.MODELS.items():
        assert VLM(preset(name).model).num_parameters() == parameters, name
        assert preset(name).batch_size == batch, name
