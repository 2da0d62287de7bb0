"""Pure decisions of mdstream.ops (throttle, health, labels, routing) and the shipped rules and
dashboard: promtool's own checks and unit tests, and every metric they name exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from mdstream.ops import metrics
from mdstream.ops.health import ProgressTracker, assess
from mdstream.ops.labels import reason_class
from mdstream.ops.throttle import (
    Observation,
    ThrottleLimits,
    ThrottleState,
    actions,
    coalesce,
    decide,
)
from mdstream.providers.fields import quote, trade
from mdstream.services import Endpoints

OPS = Path(__file__).resolve().parent.parent / "ops"
RULES = OPS / "rules" / "mdstream.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "mdstream.json"
LIMITS = ThrottleLimits(lag_engage=100, lag_severe=1000, lag_release=20, hold_s=5)


def test_throttle_rises_at_once_and_falls_one_level_after_hold() -> None:
    s = ThrottleState(0, 0.0)
    s = decide(s, Observation(1.0, lag=50), LIMITS)
    assert s.level == 0
    s = decide(s, Observation(2.0, lag=5000), LIMITS)
    assert s == ThrottleState(2, 2.0)  # straight to 2
    s = decide(s, Observation(3.0, lag=10), LIMITS)
    assert s.level == 2  # released, but not held long enough
    s = decide(s, Observation(7.5, lag=50), LIMITS)
    assert s.level == 2  # 50 > release: hysteresis keeps it
    s = decide(s, Observation(8.0, lag=10), LIMITS)
    assert s == ThrottleState(1, 8.0)
    s = decide(s, Observation(9.0, lag=None), LIMITS)
    assert s.level == 1  # unknown lag changes nothing
    s = decide(s, Observation(13.0, lag=0), LIMITS)
    assert s.level == 0


def test_throttle_latency_engages_too() -> None:
    s = decide(ThrottleState(), Observation(1.0, lag=0, latency_s=6.0), LIMITS)
    assert s.level == 1
    s = decide(s, Observation(2.0, lag=0, latency_s=11.0), LIMITS)
    assert s.level == 2


def test_actions_pause_only_non_priority_providers() -> None:
    assert actions(0, False, LIMITS) == actions(0, True, LIMITS)
    assert not actions(0, False, LIMITS).coalesce_quotes
    one = actions(1, False, LIMITS)
    assert one.coalesce_quotes and not one.paused and one.batch_scale == 4
    assert actions(2, False, LIMITS).paused and not actions(2, True, LIMITS).paused


def test_coalesce_replaces_only_a_quote_by_a_quote() -> None:
    buf: list = []
    t1, q1, q2, t2, q3 = (
        trade(1, 10.0, 1.0),
        quote(2, 9.9, 10.1),
        quote(3, 9.8, 10.2),
        trade(4, 10.0, 2.0),
        quote(5, 9.7, 10.3),
    )
    assert [coalesce(buf, t) for t in (t1, q1, q2, t2, q3)] == [False, False, True, False, False]
    assert buf == [t1, q2, t2, q3]  # every trade kept, in order; q1 superseded by q2


def test_stall_needs_lag_and_no_commit_progress() -> None:
    tracker = ProgressTracker(stall_s=10)
    tp, idle = ("raw", 0), ("raw", 1)
    tracker.observe({tp: 5, idle: 7}, now=0)
    tracker.observe({tp: 5, idle: 7}, now=11)
    assert tracker.stalled({tp: 3, idle: 0}, None, now=11) == [tp]
    assert tracker.stalled({tp: 3}, {idle}, now=11) == []  # not ours
    tracker.observe({tp: 6}, now=12)
    assert tracker.stalled({tp: 3}, None, now=13) == []
    report = assess(now=13, broker_ok_at=12, broker_timeout_s=5, assigned=True, stalled=[tp])
    assert not report.live and not report.ready and report.checks["progress"].startswith("stalled")
    ok = assess(now=13, broker_ok_at=1, broker_timeout_s=5, assigned=True, stalled=[])
    assert ok.live and not ok.ready and ok.checks["broker"] == "unreachable"


def test_reason_class_bounds_label_values() -> None:
    assert reason_class("price -1.5 is not positive: tick 3") == "price N is not positive"
    assert reason_class("") == "unknown"
    assert len(reason_class("x" * 500)) == 48


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(mdstream_[a-z0-9_]+)", expr))


def _defined() -> set[str]:
    names = set()
    for collector in list(REGISTRY._collector_to_names):  # every metric of the default registry
        for m in collector.describe() if hasattr(collector, "describe") else []:
            names.add(m.name)
    metrics.breaker_state()
    metrics.failover_on_cache()
    names |= {"mdstream_breaker_state", "mdstream_failover_on_cache"}
    names |= {"mdstream_disk_free_ratio", "mdstream_disk_free_bytes"}
    return names


def rule_exprs() -> dict[str, str]:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def panel_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    return {p["title"]: t["expr"] for p in dash["panels"] for t in p["targets"]}


def _base(name: str) -> str:
    return re.sub(r"_(bucket|count|sum|total)$", "", name)


def test_every_metric_in_rules_and_dashboard_is_defined() -> None:
    defined = {_base(n) for n in _defined()}
    used = {n for e in [*rule_exprs().values(), *panel_exprs().values()] for n in _names_in(e)}
    missing = sorted(n for n in used if _base(n) not in defined)
    assert not missing, f"rules/dashboard name metrics nobody exports: {missing}"


@pytest.mark.services
def test_promtool_checks_and_unit_tests_pass(services: Endpoints) -> None:
    """promtool comes with the Prometheus service's Debian package (installed by `services`)."""
    promtool = shutil.which("promtool")
    assert promtool, "the prometheus service should have installed promtool"
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in check.stdout
    tests = sorted((OPS / "tests").glob("*.yml"))
    run = subprocess.run(
        [promtool, "test", "rules", *map(str, tests)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
