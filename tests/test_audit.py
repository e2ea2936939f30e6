"""Supply chain and deserialization: the dependency audit, honest about what it could check,
and a static scan for unpickling in the code that runs in production.

The audit runs pip-audit on ``requirements.lock``. A vulnerability service that cannot be
reached, or that answers without vulnerability data (the PyPI mirror this project's machines
and CI use strips the ``vulnerabilities`` field and answers 404 for single releases), would make
pip-audit report "No known vulnerabilities found" without having checked anything. So the test
first asks each service about a canary with a published vulnerability (requests 2.19.0,
CVE-2018-18074) and audits only through a service that reports it; when none does, it is
skipped with the reason. Any vulnerability found must be listed, with a justification, under
"Accepted vulnerabilities" in docs/security.md, or the test fails.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK = REPO_ROOT / "requirements.lock"
SECURITY_DOC = REPO_ROOT / "docs" / "security.md"
PIP_AUDIT = str(Path(sys.executable).with_name("pip-audit"))
CANARY = "requests==2.19.0"
CANARY_IDS = {"CVE-2018-18074", "PYSEC-2018-28", "GHSA-x84v-xcm2-53pg"}
SERVICES = ("pypi", "osv")
AUDIT_ARGS = ["--no-deps", "--disable-pip", "--format", "json", "--progress-spinner", "off"]
SCANNED = ("recsys", "serving", "flows", "features", "monitoring")


# ---- the dependency audit -------------------------------------------------------------------


def start_pip_audit(requirements: Path, service: str) -> subprocess.Popen:
    """pip-audit on ``requirements`` through ``service``, JSON on stdout (see :func:`report`)."""
    return subprocess.Popen(
        [PIP_AUDIT, "-r", str(requirements), "-s", service, "--timeout", "5", *AUDIT_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report(proc: subprocess.Popen, timeout: float) -> dict | str:
    """The JSON report of a pip-audit run, or why there is none."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"no answer within {timeout:g} s"
    try:
        return json.loads(stdout)
    except ValueError:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"


def canary_verdict(report: dict | str) -> str | None:
    """None when the report names the canary's known vulnerability; otherwise why the service
    cannot be trusted to find any."""
    if isinstance(report, str):
        return f"unreachable ({report})"
    found = {d.get("name", "").lower(): d for d in report.get("dependencies", [])}
    canary = found.get("requests")
    if canary is None:
        return "no answer about the canary"
    if canary.get("skip_reason"):
        return f"could not audit the canary ({canary['skip_reason']})"
    ids = {i for v in canary.get("vulns", []) for i in (v.get("id"), *v.get("aliases", []))}
    if not ids & CANARY_IDS:
        return (
            f"came back clean for {CANARY}, which has CVE-2018-18074: the service answered "
            "without vulnerability data"
        )
    return None


def accepted_vulnerabilities(doc: str) -> dict[str, str]:
    """``{id: justification}`` from the "Accepted vulnerabilities" table of docs/security.md;
    a row without a justification accepts nothing."""
    match = re.search(r"^## Accepted vulnerabilities\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    if match is None:
        raise AssertionError("docs/security.md has no '## Accepted vulnerabilities' section")
    accepted = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 3:
            continue
        ident, justification = cells[0].strip("`"), cells[-1]
        if re.fullmatch(r"(PYSEC|GHSA|CVE|OSV)-[\w-]+", ident) and justification not in ("", "-"):
            accepted[ident] = justification
    return accepted


def audit_problems(report: dict, accepted: dict[str, str]) -> list[str]:
    """Every vulnerability not accepted in docs/security.md, and every dependency the service
    could not audit (an audit that skips a package says nothing about it)."""
    problems = []
    for dep in report.get("dependencies", []):
        where = f"{dep.get('name')} {dep.get('version', '')}".strip()
        if dep.get("skip_reason"):
            problems.append(f"{where}: not audited ({dep['skip_reason']})")
        for vuln in dep.get("vulns", []):
            if not {vuln["id"], *vuln.get("aliases", [])} & accepted.keys():
                fixes = ", ".join(vuln.get("fix_versions", [])) or "none"
                problems.append(f"{where}: {vuln['id']} (fixed in {fixes}) is not accepted")
    return problems


def test_dependency_audit(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text(CANARY + "\n")
    running = {name: start_pip_audit(canary, name) for name in SERVICES}  # side by side
    verdicts = {name: canary_verdict(report(proc, timeout=15)) for name, proc in running.items()}
    service = next((name for name, verdict in verdicts.items() if verdict is None), None)
    reasons = [f"{name}: {verdict}" for name, verdict in verdicts.items()]
    if service is None:
        pytest.skip(
            f"dependency audit not run: no vulnerability service reported the canary {CANARY} "
            f"(CVE-2018-18074), so an audit could not fail; {'; '.join(reasons)}. The project's "
            "machines and CI have no vulnerability database (their PyPI mirror strips "
            "vulnerability data, api.osv.dev is unreachable): run the audit in docs/security.md "
            "on a machine with internet"
        )
    audit = report(start_pip_audit(LOCK, service), timeout=600)
    assert isinstance(audit, dict), f"pip-audit -s {service} gave no report: {audit}"
    problems = audit_problems(audit, accepted_vulnerabilities(SECURITY_DOC.read_text()))
    assert not problems, "\n".join(problems)


def test_a_service_without_vulnerability_data_fails_the_canary():
    # the three answers seen here, in pip-audit's JSON format
    not_found = {"dependencies": [{"name": "requests", "skip_reason": "Dependency not found"}]}
    clean = {"dependencies": [{"name": "requests", "version": "2.19.0", "vulns": []}]}
    assert "could not audit the canary" in canary_verdict(not_found)
    assert "came back clean" in canary_verdict(clean)
    assert "unreachable" in canary_verdict("exit 1: ConnectionError: api.osv.dev")
    assert "no answer" in canary_verdict({"dependencies": []})
    other = {"id": "PYSEC-2023-74", "fix_versions": ["2.31.0"], "aliases": ["CVE-2023-32681"]}
    unrelated = {"dependencies": [{"name": "requests", "version": "2.19.0", "vulns": [other]}]}
    assert "came back clean" in canary_verdict(unrelated)
    known = {"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"], "aliases": ["CVE-2018-18074"]}
    working = {"dependencies": [{"name": "requests", "version": "2.19.0", "vulns": [known]}]}
    assert canary_verdict(working) is None


def test_only_vulnerabilities_justified_in_the_security_doc_pass():
    doc = (
        "# Security\n\n## Accepted vulnerabilities\n\n"
        "| id | package | justification |\n|---|---|---|\n"
        "| `GHSA-aaaa-bbbb-cccc` | foo 1.0 | only reachable through an API we never call |\n"
        "| PYSEC-2024-1 | bar 2.0 | |\n\n## Next section\n| CVE-2024-9 | baz | out of the table |\n"
    )
    accepted = accepted_vulnerabilities(doc)
    justified = "GHSA-aaaa-bbbb-cccc"
    assert accepted == {justified: "only reachable through an API we never call"}
    report = {
        "dependencies": [
            {"name": "foo", "version": "1.0", "vulns": [{"id": "PYSEC-2024-7", "aliases": []}]},
            {
                "name": "foo",
                "version": "1.0",
                "vulns": [{"id": "X", "aliases": ["GHSA-aaaa-bbbb-cccc"]}],
            },
            {"name": "bar", "version": "2.0", "vulns": [{"id": "PYSEC-2024-1", "aliases": []}]},
            {"name": "baz", "version": "3.0", "vulns": [{"id": "CVE-2024-9", "aliases": []}]},
            {"name": "qux", "skip_reason": "Dependency not found on PyPI"},
            {"name": "ok", "version": "1.0", "vulns": []},
        ]
    }
    problems = audit_problems(report, accepted)
    assert [p.split(":")[0] for p in problems] == ["foo 1.0", "bar 2.0", "baz 3.0", "qux"]
    assert "PYSEC-2024-7 (fixed in none) is not accepted" in problems[0]
    assert "not audited" in problems[3]
    with pytest.raises(AssertionError, match="no '## Accepted vulnerabilities' section"):
        accepted_vulnerabilities("# Security\n")


def test_the_security_doc_gives_the_audit_command_and_parses():
    doc = SECURITY_DOC.read_text()
    assert accepted_vulnerabilities(doc) is not None
    assert "pip-audit -r requirements.lock --no-deps --disable-pip" in doc
    assert "weights_only=True" in doc and "RECSYS_ADMIN_TOKEN" in doc and "127.0.0.1" in doc


# ---- no unpickling --------------------------------------------------------------------------

# Calls that unpickle (run code from the bytes they read), by their full dotted name.
UNPICKLING = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "pandas.read_pickle",
    "shelve.open",
    "marshal.load",
    "marshal.loads",
}


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    """The full dotted name a call's function refers to, through the module's imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(names.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in call.keywords
    )


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line call`` for each call in ``source`` that can unpickle: the names in
    :data:`UNPICKLING`, ``torch.load`` without ``weights_only=True`` and ``numpy.load`` with
    ``allow_pickle=True``."""
    tree = ast.parse(source, filename)
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, names)
        if name is None:
            continue
        bad = (
            name in UNPICKLING
            or (name == "torch.load" and not _keyword_is(node, "weights_only", True))
            or (name == "numpy.load" and _keyword_is(node, "allow_pickle", True))
        )
        if bad:
            found.append((node.lineno, f"{filename}:{node.lineno} {name}"))
    return [hit for _, hit in sorted(found)]


def test_no_code_that_runs_in_production_unpickles():
    files = sorted(p for folder in SCANNED for p in (REPO_ROOT / folder).rglob("*.py"))
    assert len(files) > 40  # the scan sees the code, not an empty folder
    found = [
        hit for p in files for hit in unsafe_loads(p.read_text(), str(p.relative_to(REPO_ROOT)))
    ]
    assert found == [], "unpickling calls (load weights with weights_only=True):\n" + "\n".join(
        found
    )


def test_the_unpickling_scan_catches_each_way_of_writing_it():
    bad = """
import pickle
import pickle as pk
import numpy as np
import torch
import cloudpickle
from pickle import loads
from joblib import load as jl
import pandas as pd

pickle.load(handle)
pk.loads(payload)
loads(payload)
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
cloudpickle.loads(payload)
jl(path)
pd.read_pickle(path)
"""
    hits = unsafe_loads(bad)
    assert [h.split(" ")[1] for h in hits] == [
        "pickle.load",
        "pickle.loads",
        "pickle.loads",
        "torch.load",
        "torch.load",
        "numpy.load",
        "cloudpickle.loads",
        "joblib.load",
        "pandas.read_pickle",
    ]
    good = """
import io, json
import numpy as np
import torch
torch.load(io.BytesIO(state), weights_only=True)
np.load(path, allow_pickle=False)
np.load(path)
json.loads(text)
"""
    assert unsafe_loads(good) == []
