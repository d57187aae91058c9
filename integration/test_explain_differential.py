"""`keyward explain` against the real Envoy: generated cases, each decided both ways.

A seeded generator makes keys (project and org keys; active, revoked, paused, expired; live and
test; scopes, model allow-lists, spend caps spent or not, rate limits), projects (active,
archived, suspended; capped or not) and one request per key (route, project named or not,
model allowed or not, from a browser or not, a body that is JSON or not). Each key is used by
exactly one request, on its own project and org, so the Envoy it meets is "fresh" for it: the
state `explain` assumes. The request `explain` decides offline is the one sent to Envoy (same
path, headers and body); the test compares the answers case by case: status and error code,
or the upstream hit with the same identity headers, or (shadow mode) the same
`x-keyward-shadow-denied` code.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

import harness
from keys import Key, ak_key, vpx_key

CASES = 240
SEED = 20261205
KEYWARD_BIN = os.environ.get("KEYWARD_BIN", str(harness.REPO_ROOT / "target" / "debug" / "keyward"))
IDENTITY = ("x-keyward-key-id", "x-keyward-project", "x-keyward-org", "x-keyward-environment")

ROUTES = [
    {"name": "health", "match": {"path_prefix": "/healthz"}, "exempt": True},
    {"name": "chat", "match": {"path_prefix": "/v1/chat/"}, "meter": True, "scopes": ["chat:write"],
     "environments": ["live"], "deny_browser_requests": True},
    {"name": "embeddings", "match": {"path_prefix": "/v1/embeddings"}, "scopes": ["embeddings:read"],
     "model": {"header": "x-model"}, "project": {"header": "x-project-id"}},
    {"name": "projects", "match": {"path_prefix": "/v1/projects/"},
     "project": {"path_pattern": "/v1/projects/{project}/"}, "require_project": True},
    {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"], "error_format": "anthropic"},
]
ROUTE_NAMES = [r["name"] for r in ROUTES] + ["(fallback)"]
PRICES = [{"model": "gpt-4o*", "input_microusd_per_mtok": 2_500_000, "output_microusd_per_mtok": 10_000_000}]


@dataclass
class Case:
    index: int
    key_name: str
    key: Key
    route: str
    shadow: bool
    project: Optional[str] = None
    model: Optional[str] = None
    origin: bool = False
    body: Optional[bytes] = None
    records: dict = field(default_factory=dict)


def _generate(now: int):
    rng = random.Random(SEED)
    projects, keys, cases = [], [], []
    projects.append({"id": "proj_foreign", "org": "org_foreign", "status": "active"})
    for i in range(CASES):
        org, own, sibling = f"org_{i}", f"proj_{i}", f"proj_{i}_b"
        status = rng.choices(["active", "archived", "suspended"], [85, 10, 5])[0]
        project = {"id": own, "org": org, "status": status}
        if rng.random() < 0.25:
            project["spend_cap_microusd"] = 1_000_000
            project["spent_microusd"] = rng.choice([0, 999_999, 1_000_000])
        projects.append(project)
        projects.append({"id": sibling, "org": org, "status": rng.choice(["active", "active", "archived"])})

        environment = rng.choice(["live", "live", "live", "test"])
        key = vpx_key(environment) if rng.random() < 0.3 else ak_key()
        fields: dict = {"environment": environment, "label": f"case-{i}"}
        org_key = rng.random() < 0.2
        if org_key:
            fields["org"] = org
        else:
            fields["project"] = own
        fields["status"] = rng.choices(["active", "revoked", "paused"], [86, 7, 7])[0]
        if rng.random() < 0.07:
            fields["expires_at"] = now - 3600
        elif rng.random() < 0.2:
            fields["expires_at"] = now + 86400
        fields["scopes"] = rng.choice([["*"], ["chat:write"], ["embeddings:read"], ["admin"],
                                      ["chat:write", "embeddings:read"], []])
        if rng.random() < 0.4:
            fields["models"] = rng.choice([["gpt-4o*"], ["gpt-4o-mini"], ["claude-*"], ["gpt-4o*", "claude-*"]])
        if rng.random() < 0.3:
            fields["spend_cap_microusd"] = 2_000_000
            fields["spent_microusd"] = rng.choice([0, 1_999_999, 2_000_000, 5_000_000])
        if rng.random() < 0.15:
            fields["spend_soft_cap_microusd"] = 1_000_000
        if rng.random() < 0.2:
            fields["rate_limits"] = {"requests_per_minute": rng.choice([1, 60])}
        keys.append(key.record(**fields))

        route = rng.choice(ROUTE_NAMES)
        case = Case(index=i, key_name=f"case-{i}", key=key, route=route, shadow=rng.random() < 0.25)
        case.project = rng.choices([None, own, sibling, "proj_foreign", "proj_nowhere"], [40, 25, 15, 10, 10])[0]
        if route == "projects" and case.project is None and rng.random() < 0.7:
            case.project = own if not org_key else rng.choice([own, sibling])
        case.model = rng.choice([None, "gpt-4o-mini", "gpt-4o", "claude-3-opus", "llama-3"])
        case.origin = rng.random() < 0.15
        if route == "chat" and rng.random() < 0.35:
            case.body = rng.choice([b"not json", b'{"model":"gpt-4o","model":"o3"}',
                                    b'{"model":"gpt-4o-mini","max_tokens":4000,"n":2}'])
        cases.append(case)
    return projects, keys, cases


def _config(mode: str, policy: dict) -> dict:
    return {"mode": mode, "routes": ROUTES, "policy": policy, "metering": {}}


def _explain(case: Case, config_path: Path, now: int) -> dict:
    args = [KEYWARD_BIN, "explain", "--json", "--key-id", case.key.id, "--route", case.route,
            "--config", str(config_path), "--now", str(now)]
    if case.project:
        args += ["--project", case.project]
    if case.model:
        args += ["--model", case.model]
    if case.origin:
        args.append("--origin")
    if case.body is not None:
        body_path = config_path.parent / f"body-{case.index}.json"
        body_path.write_bytes(case.body)
        args += ["--body", str(body_path)]
    result = subprocess.run(args, capture_output=True, timeout=30)
    assert result.returncode == 0, f"case {case.index}: explain failed: {result.stderr.decode()}"
    return json.loads(result.stdout)


def _send(envoy: harness.Envoy, case: Case, explained: dict) -> harness.Response:
    """The request explain decided, sent with the real key."""
    request = explained["request"]
    route = next((r for r in ROUTES if r["name"] == case.route), None)
    headers: list[tuple[str, str]] = []
    if route is None:
        path = "/keyward-audit/unmatched"
    else:
        path = route["match"]["path_prefix"]
        source = route.get("project")
        if case.project and source and "path_pattern" in source:
            path = source["path_pattern"].replace("{project}", case.project)
        elif case.project and source and "header" in source:
            headers.append((source["header"], case.project))
        if case.model and route.get("model", {}).get("header"):
            headers.append((route["model"]["header"], case.model))
    assert request["project"] == case.project
    if case.origin:
        headers.append(("origin", "https://browser.invalid"))
    headers.append(("authorization", f"Bearer {case.key.plaintext}"))
    body = None
    if route is not None and route.get("meter"):
        body = case.body if case.body is not None else (
            json.dumps({"model": case.model}, separators=(",", ":")).encode() if case.model else b"{}")
        headers.append(("content-type", "application/json"))
    return harness.http_request(envoy.port, "POST", path, headers=headers, body=body)


@pytest.fixture(scope="module")
def world(tmp_path_factory, wasm):
    workdir = tmp_path_factory.mktemp("differential")
    now = int(__import__("time").time())
    projects, keys, cases = _generate(now)
    policy = {"version": 7, "issued_at": now - 60, "projects": projects, "keys": keys, "prices": PRICES}
    envoys, paths = {}, {}
    try:
        for mode in ("enforce", "shadow"):
            config = _config(mode, policy)
            paths[mode] = workdir / f"{mode}.json"
            paths[mode].write_text(json.dumps(config))
            envoys[mode] = harness.Envoy(f"differential-{mode}", workdir, plugin_config=config, wasm=wasm).start()
        yield cases, envoys, paths, now
    finally:
        for envoy in envoys.values():
            envoy.stop()


def test_explain_answers_what_envoy_answers(world):
    cases, envoys, paths, now = world
    assert len(cases) >= 200
    mismatches, seen = [], set()
    for case in cases:
        mode = "shadow" if case.shadow else "enforce"
        explained = _explain(case, paths[mode], now)
        response = _send(envoys[mode], case, explained)
        upstream = envoys[mode].upstream.by_request_id(response.request_id)
        decision = explained["decision"]
        seen.add((mode, decision, explained.get("code") or explained.get("shadow_denied")))
        problem = None
        if decision == "deny":
            got = (response.status, response.header("x-keyward-error"))
            if got != (explained["status"], explained["code"]) or upstream:
                problem = f"explain: deny {explained['status']} {explained['code']}; envoy: {got}, upstream hits {len(upstream)}"
        elif decision in ("allow", "exempt"):
            if response.status != 200 or len(upstream) != 1:
                problem = f"explain: {decision}; envoy: {response.status} {response.header('x-keyward-error')}"
            else:
                hit = upstream[0]
                want = dict(explained.get("headers") or [])
                got = {name: hit.header(name) for name in IDENTITY if hit.header(name) is not None}
                if got != want:
                    problem = f"identity: explain {want}, upstream {got}"
                shadowed = hit.header("x-keyward-shadow-denied")
                if shadowed != explained.get("shadow_denied"):
                    problem = f"shadow: explain {explained.get('shadow_denied')}, upstream {shadowed}"
        else:
            problem = f"unexpected decision {decision}"
        if problem:
            mismatches.append(f"case {case.index} ({mode}, key {case.key.id}, route {case.route}, "
                              f"project {case.project}, model {case.model}, origin {case.origin}, "
                              f"body {case.body!r}): {problem}")
    assert not mismatches, f"{len(mismatches)} of {len(cases)} cases differ:\n" + "\n".join(mismatches[:25])
    # The generator must reach the interesting answers, or the comparison proves little.
    codes = {code for _, _, code in seen if code}
    for wanted in ("insufficient_scope", "model_not_allowed", "key_revoked", "key_paused", "key_expired",
                   "project_mismatch", "project_archived", "environment_mismatch", "spend_cap_exceeded",
                   "browser_request_denied", "invalid_request_body"):
        assert wanted in codes, f"no generated case reached {wanted}: {sorted(codes)}"
    assert any(decision == "allow" for _, decision, code in seen if not code)
    assert any(mode == "shadow" and code for mode, decision, code in seen if decision == "allow")
