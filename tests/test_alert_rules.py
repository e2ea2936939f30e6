"""The Prometheus and Grafana material of infra/, checked with the real promtool.

- ``promtool check config`` on infra/prometheus/prometheus.yml (its rule file path is the
  container's, so a temporary copy points it at the repository's file);
- ``promtool check rules`` and ``promtool test rules`` on the alert rules and their unit tests,
  and both shown to reject a broken rule and a wrong expectation;
- every alert documented (``for``, severity, summary, description, a runbook section that
  exists) and tested (fires on a crafted series, quiet on a normal one);
- the Grafana dashboards: well-formed JSON on the provisioned datasource, and every panel
  query parses (wrapped as a recording rule for ``promtool check rules``);
- every metric name the rules and dashboards use is in a real scrape of the service's /metrics.

Without promtool the promtool tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO_ROOT / "infra" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
GRAFANA = REPO_ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = GRAFANA / "provisioning" / "dashboards" / "recsys.yml"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
COMPOSE = REPO_ROOT / "infra" / "docker-compose.yml"

CONTAINER_RULES = "/etc/prometheus/alerts.yml"
SERVICE_JOB, SERVICE_TARGET = "recsys-service", "recsys:3000"
SEVERITIES = {"critical", "warning"}
# Series Prometheus makes itself: never in the service's scrape.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Grafana's own variables, replaced by a sample value before promtool parses a panel query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = (
            "promtool not found: install Debian's `prometheus` package "
            "(apt-get install prometheus); .ci/run does it under CI"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module", autouse=True)
def rule_test_run():
    """``promtool test rules`` on the alert unit tests, started in the background when the
    module starts: it takes seconds of CPU on one core, and the scrape test's service starts on
    the other meanwhile. Its result is read by the module's last test. None without promtool."""
    path = shutil.which("promtool")
    if path is None:
        yield None
        return
    run = subprocess.Popen(
        [path, "test", "rules", str(RULE_TESTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield run
    if run.poll() is None:
        run.kill()
        run.wait()
    run.stdout.close()


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rules(doc: dict) -> list[dict]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


# ---- Prometheus configuration ----------------------------------------------------------------


def test_prometheus_config_scrapes_the_service_and_passes_promtool(promtool, tmp_path):
    config = load_yaml(CONFIG)
    assert config["rule_files"] == [CONTAINER_RULES]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    service = jobs[SERVICE_JOB]
    assert service.get("metrics_path", "/metrics") == "/metrics"
    assert [t for s in service["static_configs"] for t in s["targets"]] == [SERVICE_TARGET]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump({**config, "rule_files": [str(RULES)]}))
    checked = run_promtool(promtool, "check", "config", local)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout and str(RULES) in checked.stdout


def test_promtool_rejects_a_config_whose_rule_file_is_broken(promtool, tmp_path):
    broken = tmp_path / "alerts.yml"
    broken.write_text(
        RULES.read_text().replace("recsys_serving_ready == 0", "recsys_serving_ready ==")
    )
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump({**load_yaml(CONFIG), "rule_files": [str(broken)]}))
    checked = run_promtool(promtool, "check", "config", local)
    assert checked.returncode != 0
    assert "parse error" in checked.stdout + checked.stderr


def test_compose_mounts_these_files_where_they_expect_to_be():
    if not COMPOSE.is_file():
        pytest.skip("infra/docker-compose.yml is not in this checkout")
    services = load_yaml(COMPOSE)["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert f"./prometheus/alerts.yml:{CONTAINER_RULES}:ro" in prometheus["volumes"]
    (provider,) = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    # the scrape target is the name (or an alias) of the compose service that runs bentoml
    host, _, port = SERVICE_TARGET.partition(":")
    names = set()
    for name, service in services.items():
        if "bentoml" in " ".join(map(str, service.get("command") or [])):
            names |= {name, service.get("hostname")}
            for network in (service.get("networks") or {}).values():
                names |= set((network or {}).get("aliases", []))
    assert host in names, f"compose serves bentoml as {sorted(filter(None, names))}, not {host}"
    assert f"--port {port}" in " ".join(
        " ".join(map(str, s.get("command") or [])) for s in services.values()
    )


# ---- alert rules -----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool):
    checked = run_promtool(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules(load_yaml(RULES)))} rules found" in checked.stdout


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("recsys_serving_ready == 0", "recsys_serving_ready == ", "parse error"),
        ("for: 5m", "for: five minutes", "not a valid duration"),
        ("expr: recsys_serving_ready == 0", "exr: recsys_serving_ready == 0", "field exr"),
        ("{{ $value | humanizeDuration }}", "{{ $value | asDuration }}", "not defined"),
    ],
)
def test_promtool_rejects_a_broken_rule_file(promtool, tmp_path, old, new, needle):
    broken = tmp_path / "alerts.yml"
    assert old in RULES.read_text()
    broken.write_text(RULES.read_text().replace(old, new, 1))
    checked = run_promtool(promtool, "check", "rules", broken)
    assert checked.returncode != 0
    assert needle in (checked.stdout + checked.stderr).lower()


def test_a_rule_test_with_a_wrong_expectation_fails(promtool, tmp_path):
    suite = load_yaml(RULE_TESTS)
    first = suite["tests"][0]  # service down: one short test group keeps this fast
    right = {**suite, "rule_files": [str(RULES)], "tests": [first]}
    wrong = copy.deepcopy(right)
    firing = next(t for t in wrong["tests"][0]["alert_rule_test"] if t["exp_alerts"])
    firing["exp_alerts"][0]["exp_labels"]["severity"] = "warning"
    quiet = next(t for t in wrong["tests"][0]["alert_rule_test"] if not t["exp_alerts"])
    quiet["eval_time"] = "10m"  # by then the alert fires
    for name, doc in (("right", right), ("wrong", wrong)):
        (tmp_path / f"{name}.test.yml").write_text(yaml.safe_dump(doc))
    assert run_promtool(promtool, "test", "rules", tmp_path / "right.test.yml").returncode == 0
    failed = run_promtool(promtool, "test", "rules", tmp_path / "wrong.test.yml")
    assert failed.returncode != 0
    assert "FAILED" in failed.stdout + failed.stderr
    assert 'severity="warning"' in failed.stdout + failed.stderr


def coverage_problems(rule_doc: dict, test_doc: dict) -> list[str]:
    """Alerts of ``rule_doc`` without a unit test that fires them or one that finds them quiet,
    and unit tests of alerts that do not exist."""
    alerts = {rule["alert"] for rule in rules(rule_doc) if "alert" in rule}
    firing, quiet = set(), set()
    for group in test_doc["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = [f"{a}: no test where it fires" for a in sorted(alerts - firing)]
    problems += [f"{a}: no test where it stays quiet" for a in sorted(alerts - quiet)]
    problems += [f"{a}: tested but not a rule" for a in sorted((firing | quiet) - alerts)]
    return problems


def test_coverage_check_finds_an_untested_alert():
    rule_doc = load_yaml(RULES)
    test_doc = load_yaml(RULE_TESTS)
    for group in test_doc["tests"]:
        group["alert_rule_test"] = [
            case
            for case in group["alert_rule_test"]
            if not (case["alertname"] == "RecsysModelStale" and not case["exp_alerts"])
        ]
    assert coverage_problems(rule_doc, test_doc) == [
        "RecsysModelStale: no test where it stays quiet"
    ]


def runbook_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of ``markdown``."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def alert_problems(rule: dict, anchors: set[str]) -> list[str]:
    """What an alert rule lacks: ``for``, a known severity, summary, description, and a
    runbook_url pointing at an existing section of docs/runbook.md."""
    name = rule.get("alert", "?")
    problems = []
    if not rule.get("for"):
        problems.append(f"{name}: no for")
    if rule.get("labels", {}).get("severity") not in SEVERITIES:
        problems.append(f"{name}: severity not one of {sorted(SEVERITIES)}")
    notes = rule.get("annotations", {})
    problems += [f"{name}: no {key}" for key in ("summary", "description") if not notes.get(key)]
    url = notes.get("runbook_url", "")
    page, _, anchor = url.partition("#")
    if page != "docs/runbook.md" or anchor not in anchors:
        problems.append(f"{name}: runbook_url {url!r} is not a section of docs/runbook.md")
    return problems


def test_every_alert_has_for_severity_annotations_and_a_runbook_section():
    anchors = runbook_anchors(RUNBOOK.read_text())
    alerts = [rule for rule in rules(load_yaml(RULES)) if "alert" in rule]
    assert len(alerts) >= 10
    assert [p for rule in alerts for p in alert_problems(rule, anchors)] == []
    # the guardian checks' sections are still there
    assert {"servingreadiness", "featuresfeature_freshness", "canarycanary"} <= anchors


def test_alert_lint_finds_what_a_rule_lacks():
    anchors = runbook_anchors("# Runbook\n\n## Alert: RecsysServiceDown\n")
    assert anchors == {"runbook", "alert-recsysservicedown"}
    good = {
        "alert": "RecsysServiceDown",
        "for": "2m",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "s",
            "description": "d",
            "runbook_url": "docs/runbook.md#alert-recsysservicedown",
        },
    }
    assert alert_problems(good, anchors) == []
    bad = {**good, "for": None, "labels": {"severity": "page"}}
    bad["annotations"] = {"summary": "s", "runbook_url": "docs/runbook.md#alert-nosuchalert"}
    assert alert_problems(bad, anchors) == [
        "RecsysServiceDown: no for",
        "RecsysServiceDown: severity not one of ['critical', 'warning']",
        "RecsysServiceDown: no description",
        "RecsysServiceDown: runbook_url 'docs/runbook.md#alert-nosuchalert' is not a section "
        "of docs/runbook.md",
    ]


# ---- Grafana ---------------------------------------------------------------------------------


def datasource_uid() -> str:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    return source["uid"]


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel id/refId, PromQL) of every target of every panel, rows' panels included."""
    out = []
    for panel in dashboard.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((f"{inner.get('id')}/{target.get('refId')}", target.get("expr", "")))
    return out


def dashboard_problems(dashboard: dict, uid: str) -> list[str]:
    """What makes a provisioned dashboard wrong: no uid or title, duplicate panel ids, panels
    off the 24-column grid, queries on another datasource, targets without a query or with
    duplicate refIds, Grafana variables this test cannot substitute."""
    problems = [f"no {key}" for key in ("uid", "title", "schemaVersion") if not dashboard.get(key)]
    panels = dashboard.get("panels") or []
    if not panels:
        problems.append("no panels")
    ids = [p.get("id") for p in panels]
    problems += [f"panel id {i} used twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for panel in panels:
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{name}: gridPos needs integer h, w, x, y")
        elif grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24:
            problems.append(f"{name}: gridPos outside the 24 columns")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{name}: duplicate refId")
        for source in [panel.get("datasource"), *(t.get("datasource") for t in targets)]:
            if not isinstance(source, dict) or source.get("uid") != uid:
                problems.append(f"{name}: datasource {source!r} is not uid {uid!r}")
        for target in targets:
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(f"{name}: target {target.get('refId')} has no expr")
            unknown = set(re.findall(r"\$\{?\w+", expr)) - set(GRAFANA_VARIABLES)
            if unknown:
                problems.append(f"{name}: unknown variables {sorted(unknown)}")
    return problems


def queries_as_rules(queries: list[tuple[str, str]]) -> dict:
    """The queries as recording rules, Grafana variables replaced: promtool then parses them."""
    recorded = []
    for n, (where, expr) in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        name = "dashboard:query_{}:{}".format(n, re.sub(r"\W", "_", where))
        recorded.append({"record": name, "expr": expr})
    return {"groups": [{"name": "dashboard-queries", "rules": recorded}]}


def test_dashboards_are_provisioned_and_well_formed():
    assert DASHBOARDS, "no dashboard in infra/grafana/dashboards"
    uid = datasource_uid()
    provider = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert provider and provider[0]["type"] == "file" and provider[0]["options"]["path"]
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard_problems(dashboard, uid) == [], path.name
        uids.add(dashboard["uid"])
    assert len(uids) == len(DASHBOARDS)
    titles = {p["title"] for d in DASHBOARDS for p in json.loads(d.read_text())["panels"]}
    for wanted in ("latency", "ctr", "fallback", "cache hit", "feature age", "model age"):
        assert any(wanted in title.lower() for title in titles), wanted


def test_dashboard_check_finds_a_broken_dashboard():
    dashboard = json.loads(DASHBOARDS[0].read_text())
    broken = copy.deepcopy(dashboard)
    panels = [p for p in broken["panels"] if p.get("targets")]
    panels[1]["id"] = panels[0]["id"]
    panels[0]["gridPos"]["x"] = 20
    panels[0]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "other"}
    panels[0]["targets"][0]["expr"] += " + $job"
    problems = dashboard_problems(broken, datasource_uid())
    assert any("used twice" in p for p in problems)
    assert any("outside the 24 columns" in p for p in problems)
    assert any("is not uid" in p for p in problems)
    assert any("unknown variables ['$job']" in p for p in problems)


def test_every_dashboard_query_parses(promtool, tmp_path):
    queries = [q for path in DASHBOARDS for q in panel_queries(json.loads(path.read_text()))]
    assert len(queries) >= 15
    wrapped = tmp_path / "dashboard-queries.yml"
    wrapped.write_text(yaml.safe_dump(queries_as_rules(queries)))
    checked = run_promtool(promtool, "check", "rules", wrapped)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout


def test_a_dashboard_query_that_does_not_parse_is_rejected(promtool, tmp_path):
    queries = [("1/A", "sum by (stage) (rate(recsys_serving_requests_total[$__rate_interval])")]
    wrapped = tmp_path / "dashboard-queries.yml"
    wrapped.write_text(yaml.safe_dump(queries_as_rules(queries)))
    checked = run_promtool(promtool, "check", "rules", wrapped)
    assert checked.returncode != 0
    assert "parse error" in checked.stdout + checked.stderr


# ---- metric names against a real scrape ------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, label names in
    matchers and grouping clauses, durations and numbers left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.groups()
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def scraped_names(text: str) -> set[str]:
    """Metric names of the samples in a Prometheus text exposition."""
    return {
        match.group(0)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for match in [re.match(r"[A-Za-z_:][\w:]*", line)]
        if match
    }


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used, over the alert rules and the dashboards; the names the
    rule file records itself and the series Prometheus makes are left out."""
    rule_doc = load_yaml(RULES)
    recorded = {rule["record"] for rule in rules(rule_doc) if "record" in rule}
    sources = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules(rule_doc)]
    for path in DASHBOARDS:
        sources += [(f"{path.name} {w}", e) for w, e in panel_queries(json.loads(path.read_text()))]
    used: dict[str, set[str]] = {}
    for where, expr in sources:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        for name in metric_names(expr) - recorded - PROMETHEUS_SERIES:
            used.setdefault(name, set()).add(where)
    return used


def test_metric_names_are_read_from_promql():
    expr = (
        "histogram_quantile(0.99, sum by (job, le) ("
        'rate(recsys_serving_stage_latency_seconds_bucket{stage="total",le!="0.1"}[5m] offset 1h)'
        ")) > 0.25 and on(job) group_left() "
        "sum(increase(recsys_serving_requests_total[1h])) >= 1e3 unless "
        'absent(up{job="recsys-service"}) or time() - recsys:ctr:ratio2h > bool 2'
    )
    assert metric_names(expr) == {
        "recsys_serving_stage_latency_seconds_bucket",
        "recsys_serving_requests_total",
        "up",
        "recsys:ctr:ratio2h",
    }
    served = scraped_names('# HELP a_total x\na_total{k="v"} 1\nb_seconds 2.5\n')
    assert served == {"a_total", "b_seconds"}
    assert {"recsys_serving_reqeusts_total"} - served  # a misspelled name is not served


def test_release_timestamps_read_the_training_time_and_window_end():
    from serving.metrics import release_timestamps

    meta = {
        "created_at": "2026-01-20T10:00:00+00:00",
        "training_window": {"start": "2026-01-01T00:00:00", "end": "2026-01-13T00:00:00"},
    }
    assert release_timestamps(meta) == (1768903200.0, 1768262400.0)  # a naive end is UTC
    assert release_timestamps({}) == (None, None)
    bad = {"created_at": "last tuesday", "training_window": ["not", "a", "dict"]}
    assert release_timestamps(bad) == (None, None)


@pytest.fixture(scope="module")
def scrape(online):
    """/metrics of a service with a materialized online store (test_serving's ``online``
    fixture), after recommendations for known and unknown users (one asked twice) and a view,
    two clicks and a purchase on one; with the served version and the number of items shown."""
    proc, _, release, _, _ = online
    users = [int(u) for u in release.user_ids[:3]] + [10**12]
    with httpx.Client(base_url=proc.url, timeout=30) as http:
        before = http.get("/metrics").text  # the service is shared: compare before and after
        answers = [http.post("/recommend", json={"user_id": u, "k": 5}).json() for u in users]
        answers.append(http.post("/recommend", json={"user_id": users[0], "k": 5}).json())
        assert {a["variant"] for a in answers} == {"champion"}
        served = answers[0]
        for event in ("view", "click", "click", "purchase"):
            feedback = {
                "request_id": served["request_id"],
                "user_id": users[0],
                "item_id": served["items"][0]["item_id"],
                "event": event,
            }
            assert http.post("/feedback", json=feedback).status_code == 200
        shown = sum(len(a["items"]) for a in answers)
        return http.get("/metrics").text, before, served["model_version"], shown


def _samples(text: str) -> dict[str, float]:
    return {
        k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in text.splitlines() if ln[:1].isalpha())
    }


@pytest.mark.slow
def test_every_metric_the_rules_and_dashboards_use_is_served(scrape):
    text, before, version, shown = scrape
    used = used_metric_names()
    assert {"recsys_serving_clicked_requests_total", "bentoml_service_request_total"} <= set(used)
    served = scraped_names(text)
    missing = {name: sorted(where) for name, where in used.items() if name not in served}
    assert missing == {}
    # what the CTR, conversion and staleness rules read, with the values the calls imply
    champion = f'{{variant="champion",version="{version}"}}'
    samples, earlier = _samples(text), _samples(before)

    def grew(series: str) -> float:
        return samples[series] - earlier.get(series, 0.0)

    assert grew(f"recsys_serving_impressions_total{champion}") == shown
    assert grew(f"recsys_serving_clicked_requests_total{champion}") == 1  # 2 clicks, 1 request
    assert grew(f"recsys_serving_converted_requests_total{champion}") == 1
    for event, count in (("view", 1), ("click", 2), ("purchase", 1)):
        labels = f'{{event="{event}",shown="true",variant="champion",version="{version}"}}'
        assert grew(f"recsys_serving_feedback_total{labels}") == count
    trained = float(samples[f"recsys_serving_model_trained_timestamp_seconds{champion}"])
    loaded = float(samples[f"recsys_serving_model_loaded_timestamp_seconds{champion}"])
    assert 0 < loaded - trained < 86400  # trained by the session fixture minutes before
    assert float(samples["recsys_serving_ready"]) == 1
    assert float(samples["recsys_serving_feature_age_seconds"]) >= 0


# ---- last: the promtool unit tests, run in the background since the module started -------------


def test_every_alert_fires_and_stays_quiet_in_the_promtool_unit_tests(promtool, rule_test_run):
    output, _ = rule_test_run.communicate(timeout=300)
    assert rule_test_run.returncode == 0, output
    assert "SUCCESS" in output
    assert coverage_problems(load_yaml(RULES), load_yaml(RULE_TESTS)) == []
