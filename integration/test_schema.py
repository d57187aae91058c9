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
