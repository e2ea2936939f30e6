"""docs/ml-test-score.md stays true: every test, file and alert it cites exists, each section
has the paper's 7 tests, and the section scores and the final score follow from the per-test
scores (sum per section, minimum over sections)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "ml-test-score.md"
SECTIONS = {
    "Data": "Data",
    "Model development": "Model",
    "ML infrastructure": "Infra",
    "Monitoring": "Monitor",
}
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
PATH_REF = re.compile(r"`((?:recsys|serving|flows|features|monitoring|infra|docs|tests)/[\w./-]+)`")
ALERT_REF = re.compile(r"`(Recsys\w+)`")


@functools.cache
def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def doc_problems(doc: str, root: Path = REPO_ROOT) -> list[str]:
    """What in ``doc`` is not so: a cited test, file or alert that does not exist, a section
    without its 7 tests, a score outside {0, 0.5, 1}, a sum or a minimum that does not add up."""
    problems = []
    for file, name in sorted(set(TEST_REF.findall(doc))):
        path = root / file
        if not path.is_file():
            problems.append(f"{file} does not exist")
        elif name not in _test_names(path):
            problems.append(f"{file} has no test {name}")
    for file in sorted(set(PATH_REF.findall(doc))):
        if not (root / file).exists():
            problems.append(f"{file} does not exist")
    rules = (root / "infra" / "prometheus" / "alerts.yml").read_text()
    for alert in sorted(set(ALERT_REF.findall(doc))):
        if f"alert: {alert}\n" not in rules:
            problems.append(f"alert {alert} is not in infra/prometheus/alerts.yml")

    scores = {}
    for title, prefix in SECTIONS.items():
        body = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
        if body is None:
            problems.append(f"no section '## {title}'")
            continue
        rows = re.findall(rf"^\| {prefix} (\d) \|.*\| ([\d.]+) \|$", body.group(1), re.M)
        if [int(n) for n, _ in rows] != list(range(1, 8)):
            problems.append(f"{title}: tests {[n for n, _ in rows]}, not {prefix} 1..7")
        points = [float(p) for _, p in rows]
        problems += [
            f"{title}: score {p} is not 0, 0.5 or 1" for p in points if p not in (0, 0.5, 1)
        ]
        stated = re.search(r"score: \*\*([\d.]+)\*\*", body.group(1))
        if stated is None or float(stated.group(1)) != sum(points):
            problems.append(
                f"{title}: stated {stated and stated.group(1)}, the rows sum to {sum(points)}"
            )
        summary = re.search(rf"^\| {title} \| ([\d.]+) \|$", doc, re.M)
        if summary is None or float(summary.group(1)) != sum(points):
            problems.append(f"{title}: the score table does not say {sum(points)}")
        scores[title] = sum(points)
    final = re.search(r"\*\*Final ML Test Score: ([\d.]+)\*\*", doc)
    if scores and (final is None or float(final.group(1)) != min(scores.values())):
        problems.append(f"final score is not the minimum {min(scores.values())}")
    return problems


def test_the_ml_test_score_document_is_true():
    assert doc_problems(DOC.read_text()) == []


def test_the_check_finds_a_missing_test_a_missing_file_and_wrong_arithmetic():
    doc = DOC.read_text()
    broken = (
        doc.replace(
            "tests/test_gate.py::test_a_worse_model_is_registered_rejected_and_never_aliased",
            "tests/test_gate.py::test_that_was_never_written",
        )
        .replace("`recsys/canary.py`", "`recsys/canary_v2.py`")
        .replace("`RecsysLatencyP99High`", "`RecsysLatencyP42High`")
        .replace("**Final ML Test Score: 2.0**", "**Final ML Test Score: 6.0**")
    )
    problems = doc_problems(broken)
    assert "tests/test_gate.py has no test test_that_was_never_written" in problems
    assert "recsys/canary_v2.py does not exist" in problems
    assert "alert RecsysLatencyP42High is not in infra/prometheus/alerts.yml" in problems
    assert "final score is not the minimum 2.0" in problems
    inflated = doc.replace("| Data 2 | All features are beneficial |", "| Data 2 | x |", 1)
    inflated = re.sub(r"(\| Data 2 \| x \|.*\| )0 \|", r"\g<1>1 |", inflated)
    assert any("Data: stated 2.0, the rows sum to 3.0" in p for p in doc_problems(inflated))
    missing_row = re.sub(r"^\| Monitor 5 \|.*\n", "", doc, flags=re.M)
    assert any("Monitoring: tests" in p for p in doc_problems(missing_row))


@pytest.mark.parametrize("score", ["0.25", "2"])
def test_a_score_outside_the_rubric_is_refused(score):
    doc = re.sub(r"^(\| Infra 5 \|.*\| )0 \|$", rf"\g<1>{score} |", DOC.read_text(), flags=re.M)
    assert any(f"score {float(score)} is not 0, 0.5 or 1" in p for p in doc_problems(doc))
