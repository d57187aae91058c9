"""The published JSON Schema of the policy snapshot agrees with what the filter accepts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

import harness
import world
from world import WORLD

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schema" / "policy-snapshot.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_snapshots_the_filter_runs_with_validate():
    """The demo policy and the integration policy are loaded by the real filter in other tests."""
    demo = json.loads((ROOT / "envoy" / "demo-policy.json").read_text())["policy"]
    for snapshot in (demo, WORLD.policy()):
        errors = [e.message for e in VALIDATOR.iter_errors(snapshot)]
        assert errors == []


def test_budgets_and_plans_validate_and_run(tmp_path, wasm):
    """Windows, quotas, a plan and a dated price table: the schema and the filter accept them."""
    snapshot = copy.deepcopy(WORLD.policy())
    snapshot["plans"] = [{"id": "free", "label": "Free", "quotas": [{"period": "day", "requests": 50}],
                          "models": ["gpt-5.4-nano", "gemini-flash-lite*"], "rate_limits": {"requests_per_minute": 10}}]
    snapshot["price_catalog"] = {"version": 3, "as_of": "2026-11-01"}
    snapshot["keys"][0]["limits"] = {
        "plan": "free", "utc_offset_minutes": -480,
        "budgets": [{"period": "day", "cap_microusd": 10000000, "soft_cap_microusd": 8000000},
                    {"period": "month", "cap_microusd": 200000000}],
        "quotas": [{"period": "month", "tokens": 1000000}],
        "increases": [{"period": "day", "microusd": 5000000, "until": 1900000000}],
        "usage": {"2026-11-30": {"microusd": 1200, "requests": 3, "tokens": 900}, "2026-W48": {}},
    }
    assert [e.message for e in VALIDATOR.iter_errors(snapshot)] == []
    config = world.enforce_config()
    config["policy"] = snapshot
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(harness.render_bootstrap(10000, 9901, 10001, config, wasm)))
    result = harness.envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def _mutated(mutate):
    snapshot = copy.deepcopy(WORLD.policy())
    mutate(snapshot)
    return snapshot


@pytest.mark.parametrize(
    "name,mutate",
    [
        ("version zero", lambda s: s.__setitem__("version", 0)),
        ("unknown top-level field", lambda s: s.__setitem__("colour", "red")),
        ("bad key status", lambda s: s["keys"][0].__setitem__("status", "deleted")),
        ("short hash", lambda s: s["keys"][0].update({"secret_sha256": "abc", "key_sha256": None}) or s["keys"][0].pop("key_sha256")),
        ("no hash", lambda s: [s["keys"][0].pop(k, None) for k in ("secret_sha256", "key_sha256")]),
        ("project and org", lambda s: s["keys"][0].update({"project": "p", "org": "o"})),
        ("bad project status", lambda s: s["projects"][0].__setitem__("status", "closed")),
        ("negative spend", lambda s: s["projects"][0].__setitem__("spent_microusd", -1)),
        ("id with spaces", lambda s: s["keys"][0].__setitem__("id", "a b")),
        ("quota per total", lambda s: s["keys"][0].__setitem__("limits", {"quotas": [{"period": "total", "requests": 1}]})),
        ("quota of nothing", lambda s: s["keys"][0].__setitem__("limits", {"quotas": [{"period": "day"}]})),
        ("offset past 14h", lambda s: s["keys"][0].__setitem__("limits", {"utc_offset_minutes": 900})),
        ("unknown limits field", lambda s: s["keys"][0].__setitem__("limits", {"colour": 1})),
        ("usage of no window", lambda s: s["keys"][0].__setitem__("limits", {"usage": {"yesterday": {"requests": 1}}})),
        ("budget without amounts", lambda s: s["projects"][0].__setitem__("limits", {"budgets": [{"period": "day"}]})),
        ("plan without id", lambda s: s.__setitem__("plans", [{"label": "free"}])),
        ("negative increase", lambda s: s["keys"][0].__setitem__("limits", {"increases": [{"period": "day", "requests": -1, "until": 9}]})),
    ],
)
def test_schema_rejects_what_the_filter_rejects(tmp_path, wasm, name, mutate):
    snapshot = _mutated(mutate)
    assert list(VALIDATOR.iter_errors(snapshot)), f"schema accepted: {name}"
    config = world.enforce_config()
    config["policy"] = snapshot
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(harness.render_bootstrap(10000, 9901, 10001, config, wasm)))
    result = harness.envoy_validate(path)
    assert result.returncode != 0, f"filter accepted: {name}"
