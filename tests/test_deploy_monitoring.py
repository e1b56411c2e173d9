"""deploy/prometheus-alerts.yml and deploy/grafana-dashboard.json (docs/deploy.md, "Monitoring").

Every metric name their expressions use must be one a running gateway really exports: the names
are taken from the `/metrics` of live gateways (a cluster-mode gateway over a one-node Redis
Cluster, which adds the `flashguard_cluster_*` figures, and a single node with a data directory
for the journal's), never from the exporter's source. The rules file must have, for every rule,
the fields an on-call reads (alert, expr, for, severity, summary), be the ones docs/deploy.md
explains, and pass `promtool check rules` and a few `promtool test rules` cases when promtool is
installed. Every dashboard panel must have a title and queries on the dashboard's Prometheus
datasource variable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, installed with the dev tools (schemathesis); no stubs
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order
from tests.test_snapshot_restore import start

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
DOCS = ROOT / "docs" / "deploy.md"
SEVERITIES = {"critical", "warning", "info"}
# Prometheus's own series: `up` is written by the scrape itself, not by the gateway.
SCRAPE_SERIES = {"up"}
# Groups of rules about the single node (journal, snapshots): their names come from a single node's
# scrape. Everything else is about cluster mode and must be exported by a cluster-mode gateway.
SINGLE_NODE_GROUPS = {"flashguard-single-node"}

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers,
    ranges, grouping clauses and offsets are taken out, less function names (an identifier
    followed by a parenthesis) and keywords."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\w+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def rules() -> list[tuple[str, dict[str, Any]]]:
    """(group name, rule) for every rule of the alerts file."""
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"], "the file has groups"
    found = []
    for group in doc["groups"]:
        assert isinstance(group.get("name"), str) and isinstance(group.get("rules"), list) and group["rules"], group
        found += [(group["name"], rule) for rule in group["rules"]]
    return found


def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included (rows themselves are not)."""
    found: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        if panel.get("type") == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels(dashboard()) for target in panel["targets"]]


def exported(text: str) -> set[str]:
    """The series names of a `/metrics` page: every sample's name, and for families that have no
    sample yet the names their type gives them (a counter's `_total`, a histogram's three)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


async def scrape(gw: Gateway) -> set[str]:
    resp = await gw.client.get("/metrics")
    assert resp.status == 200, await resp.text()
    return exported(await resp.text())


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(flashguard_check_seconds_bucket{code=~"a|b"}[$__rate_interval])))'
        " / on () group_left sum(rate(flashguard_checks_total[1m] offset 5m)) > 0.5 and up == 0"
    )
    assert metric_names(expr) == {"flashguard_check_seconds_bucket", "flashguard_checks_total", "up"}
    assert metric_names('max by (activity_id) (flashguard_activity_fused) == 1') == {"flashguard_activity_fused"}


def test_every_alert_rule_says_what_an_on_call_needs() -> None:
    seen = set()
    for group, rule in rules():
        name = rule.get("alert")
        assert isinstance(name, str) and re.fullmatch(r"Flashguard[A-Za-z0-9]+", name), (group, rule)
        assert name not in seen, f"{name} twice"
        seen.add(name)
        assert isinstance(rule.get("expr"), str) and metric_names(rule["expr"]), name
        assert isinstance(rule.get("for"), str) and re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        summary = rule.get("annotations", {}).get("summary")
        assert isinstance(summary, str) and summary.strip(), name
    assert len(seen) >= 10
    documented = set(re.findall(r"`(Flashguard[A-Za-z0-9]+)`", DOCS.read_text()))
    assert seen == documented, f"rules not in docs/deploy.md: {seen - documented}; documented, no rule: {documented - seen}"


def test_the_dashboard_has_titled_panels_with_queries_on_its_datasource_variable() -> None:
    doc = dashboard()
    assert isinstance(doc["schemaVersion"], int) and 36 <= doc["schemaVersion"] <= 39
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]] + [p["id"] for r in doc["panels"] if r.get("type") == "row" for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    found = panels(doc)
    assert len(found) >= 10
    for panel in found:
        assert isinstance(panel.get("title"), str) and panel["title"].strip(), panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel.get("targets")
        assert isinstance(targets, list) and targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert isinstance(target.get("expr"), str) and metric_names(target["expr"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    titles = " ".join(p["title"].lower() for p in found)
    for subject in ("decision", "reason", "latency", "budget", "holds", "shed", "contention", "takeovers", "round trips"):
        assert subject in titles, f"no panel about {subject}"


@pytest.mark.parametrize("mode", ["cluster"])
async def test_every_metric_used_is_one_a_running_gateway_exports(gw_factory: MakeGateway, tmp_path: Path) -> None:
    # Cluster mode, the deployment these files are for: a check allowed and one refused, so the
    # labelled families have samples (the type-given names are counted even without).
    gw = await gw_factory(base_config(skus=[{"sku_id": "S1", "cost_price": 800, "limits": {"user": 1}}]))
    await gw.check(order(item("S1", 1, 1000, discount(100))))
    await gw.check(order(item("S1", 1, 1000, discount(100))))
    cluster = await scrape(gw)
    assert {"flashguard_cluster_contention_total", "flashguard_check_seconds_bucket", "flashguard_reasons_total"} <= cluster
    # The single node with a data directory: the journal's and the snapshots' figures.
    node = await start(tmp_path)
    try:
        await node.check(order())
        single = await scrape(node)
    finally:
        await node.client.close()
    assert "flashguard_journal_failed" in single

    # Where each name is used, and which gateway must export it.
    wanted: dict[str, tuple[set[str], set[str]]] = {}
    for group, rule in rules():
        scraped = single if group in SINGLE_NODE_GROUPS else cluster
        for name in metric_names(rule["expr"]):
            wanted.setdefault(name, (scraped, set()))[1].add(rule["alert"])
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            wanted.setdefault(name, (cluster, set()))[1].add("dashboard")
    assert {"flashguard_shed_total", "flashguard_cluster_takeovers_total", "flashguard_activity_remaining", "up"} <= set(wanted)
    missing = {name: sorted(where) for name, (scraped, where) in wanted.items() if name not in scraped | SCRAPE_SERIES}
    assert not missing, f"not exported by a running gateway: {missing}"


PROMTOOL = shutil.which("promtool")


def firing(alert: str, **labels: str) -> dict[str, Any]:
    """An alert promtool should find firing: the rule's own labels and annotations, with the
    `{{ $labels.X }}` of its annotations filled in from `labels` (the series' labels)."""
    rule = next(r for _, r in rules() if r["alert"] == alert)
    annotations = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)
        assert "{{" not in text, f"{alert}: {text} needs a value promtool cannot be told"
        annotations[key] = text
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_they_fire(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A few rules against series as two gateways would export them.
    cases = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": 'up{job="flashguard", instance="g1"}', "values": "1x8 0x8"},
                    {"series": 'up{job="flashguard", instance="g2"}', "values": "1x16"},
                    {"series": 'flashguard_checks_total{decision="allow", instance="g1"}', "values": "0+100x16"},
                    {"series": 'flashguard_checks_total{decision="allow", instance="g2"}', "values": "0+100x16"},
                    {"series": 'flashguard_shed_total{instance="g1"}', "values": "0+30x16"},
                    {"series": 'flashguard_shed_total{instance="g2"}', "values": "0x16"},
                    {"series": 'flashguard_cluster_takeovers_total{instance="g2"}', "values": "0x8 3x8"},
                    {"series": 'flashguard_activity_spent{activity_id="A1", instance="g1"}', "values": "950x16"},
                    {"series": 'flashguard_activity_held{activity_id="A1", instance="g1"}', "values": "20x16"},
                    {"series": 'flashguard_activity_remaining{activity_id="A1", instance="g1"}', "values": "30x16"},
                    {"series": 'flashguard_activity_fused{activity_id="A1", instance="g1"}', "values": "0x16"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "4m",
                        "alertname": "FlashguardGatewayDown",
                        "exp_alerts": [firing("FlashguardGatewayDown", job="flashguard", instance="g1")],
                    },
                    {"eval_time": "4m", "alertname": "FlashguardNoGatewayScrapable", "exp_alerts": []},
                    # 30 shed against 200 checks + 30 every 15 s: 13%, past both thresholds.
                    {"eval_time": "4m", "alertname": "FlashguardShedding", "exp_alerts": [firing("FlashguardShedding")]},
                    {"eval_time": "4m", "alertname": "FlashguardSheddingHeavy", "exp_alerts": [firing("FlashguardSheddingHeavy")]},
                    {"eval_time": "3m", "alertname": "FlashguardClusterTakeovers", "exp_alerts": [firing("FlashguardClusterTakeovers")]},
                    {"eval_time": "1m", "alertname": "FlashguardClusterTakeovers", "exp_alerts": []},
                    {
                        "eval_time": "1m",
                        "alertname": "FlashguardBudgetLow",
                        "exp_alerts": [firing("FlashguardBudgetLow", activity_id="A1")],
                    },
                    {"eval_time": "1m", "alertname": "FlashguardBudgetFused", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "FlashguardCheckRateDropped", "exp_alerts": []},
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(cases))
    tested = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
