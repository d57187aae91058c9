"""`envoy --mode validate` loads the filter and compiles its configuration (Wasm: on_configure;
native: the filter configuration): bad plugin configs are refused."""

import copy
import json

import pytest

import harness
import world

INVALID = [
    # (id, mutate(config), text that must appear in Envoy's output)
    ("path_pattern_without_placeholder",
     lambda c: c["routes"][3].__setitem__("project", {"path_pattern": "/v1/projects/"}),
     "routes[3].project.path_pattern"),
    ("unknown_top_level_field", lambda c: c.__setitem__("bogus_field", 1), "bogus_field"),
    ("unknown_route_field", lambda c: c["routes"][0].__setitem__("exempted", True), "routes[0]"),
    ("bad_mode", lambda c: c.__setitem__("mode", "enforcing"), "mode"),
    ("max_credential_bytes_too_small", lambda c: c.__setitem__("max_credential_bytes", 8), "max_credential_bytes"),
    ("bad_spend_cap_status", lambda c: c.__setitem__("spend_cap_status", 500), "spend_cap_status"),
    ("bad_key_status", lambda c: c["policy"]["keys"][0].__setitem__("status", "enabled"), "policy.keys[0].status"),
]


def _validate(tmp_path, plugin_config, wasm):
    cfg = harness.render_bootstrap(10000, 9901, 10001, plugin_config, wasm)
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(cfg))
    return harness.envoy_validate(path)


def test_valid_config_passes(tmp_path, wasm):
    res = _validate(tmp_path, world.enforce_config(), wasm)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("mutate,needle", [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_config_fails_with_field_path(tmp_path, wasm, mutate, needle):
    cfg = copy.deepcopy(world.enforce_config())
    mutate(cfg)
    res = _validate(tmp_path, cfg, wasm)
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"envoy accepted an invalid plugin configuration:\n{out[-3000:]}"
    assert needle in out, f"{needle!r} not named in Envoy's output:\n{out[-3000:]}"


def test_not_json_fails(tmp_path, wasm):
    cfg = harness.render_bootstrap(10000, 9901, 10001, "{not json", wasm)
    assert "{not json" in json.dumps(cfg)
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(cfg))
    res = harness.envoy_validate(path)
    assert res.returncode != 0, res.stdout + res.stderr
