"""The test world: projects, keys, the inline policy snapshot and plugin configurations.

Keys are generated fresh for every test session (real random secrets); the policy stores only
their SHA-256 hashes, exactly as the control plane would.
"""

from __future__ import annotations

import copy
import time
from typing import Optional

from keys import Key, ak_key, vpx_checksum_key, vpx_key

NOW = int(time.time())
POLICY_VERSION = 42

ORG = "org_acme"
OTHER_ORG = "org_globex"

PROJECTS = [
    {"id": "proj_alpha", "org": ORG, "status": "active", "spend_cap_microusd": 100_000_000, "spent_microusd": 0},
    {"id": "proj_beta", "org": ORG, "status": "active"},
    {"id": "proj_old", "org": ORG, "status": "archived"},
    {"id": "proj_susp", "org": ORG, "status": "suspended"},
    {"id": "proj_capped", "org": ORG, "status": "active", "spend_cap_microusd": 1_000_000, "spent_microusd": 1_000_000},
    {"id": "proj_other", "org": OTHER_ORG, "status": "active"},
]
PROJECT_ORG = {p["id"]: p["org"] for p in PROJECTS}


class World:
    """All keys used by the tests, with their policy records."""

    def __init__(self):
        self.keys: dict[str, Key] = {}
        self.records: list[dict] = []
        self.owner: dict[str, dict] = {}  # key name -> {"project":..} or {"org":..}

        def add(name: str, key: Key, **fields) -> Key:
            fields.setdefault("status", "active")
            fields.setdefault("scopes", ["*"])
            fields.setdefault("label", f"test-{name}")
            rec = key.record(**fields)
            self.keys[name] = key
            self.records.append(rec)
            self.owner[name] = {k: rec[k] for k in ("project", "org") if k in rec}
            return key

        A = "proj_alpha"
        self.alpha = add(
            "alpha", ak_key(), project=A, environment="live",
            scopes=["chat:write", "embeddings:read"], models=["gpt-4o-mini", "gpt-4.1*"],
            spend_cap_microusd=5_000_000, spent_microusd=0,
        )
        self.alpha_vpx = add("alpha_vpx", vpx_key("live"), project=A, environment="live")
        self.alpha_test = add("alpha_test", vpx_key("test"), project=A, environment="test")
        self.alpha_ak_test = add("alpha_ak_test", ak_key(), project=A, environment="test")
        self.revoked = add("revoked", ak_key(), project=A, status="revoked")
        self.expired = add("expired", ak_key(), project=A, expires_at=NOW - 3600)
        self.future = add("future", ak_key(), project=A, expires_at=NOW + 86400)
        self.paused = add("paused", ak_key(), project=A, status="paused")
        self.archived = add("archived", ak_key(), project="proj_old")
        self.archived_test = add("archived_test", vpx_key("test"), project="proj_old", environment="test")
        self.revoked_archived = add("revoked_archived", ak_key(), project="proj_old", status="revoked")
        self.paused_archived = add("paused_archived", ak_key(), project="proj_old", status="paused")
        self.suspended = add("suspended", ak_key(), project="proj_susp")
        self.key_capped = add("key_capped", ak_key(), project=A, spend_cap_microusd=5_000_000, spent_microusd=5_000_000)
        self.key_over_cap = add("key_over_cap", ak_key(), project=A, spend_cap_microusd=5_000_000, spent_microusd=9_000_000)
        self.key_under_cap = add("key_under_cap", ak_key(), project=A, spend_cap_microusd=5_000_000, spent_microusd=4_999_999)
        self.capped_noscope = add(
            "capped_noscope", ak_key(), project=A, scopes=["embeddings:read"],
            spend_cap_microusd=1, spent_microusd=1,
        )
        self.capped_models = add(
            "capped_models", ak_key(), project=A, models=["gpt-4o-mini"],
            spend_cap_microusd=1, spent_microusd=1,
        )
        self.proj_capped = add("proj_capped", ak_key(), project="proj_capped")
        self.org = add("org", ak_key(), org=ORG, environment="live")
        self.org_vpx = add("org_vpx", vpx_key("live"), org=ORG, environment="live")
        self.globex = add("globex", ak_key(), project="proj_other")
        self.noscope = add("noscope", ak_key(), project=A, scopes=["embeddings:read"])
        # a key whose id exists but whose presented secret will be wrong
        self.wrong_secret_target = add("wrong_secret_target", ak_key(), project=A)
        # checksum-format keys (only accepted by the "alt" configuration's key formats)
        self.cks = add("cks", vpx_checksum_key("live"), project=A, environment="live")
        self.cks_test = add("cks_test", vpx_checksum_key("test"), project=A, environment="test")
        # 73 characters: well-formed, but longer than the alt configuration's max_credential_bytes (64)
        self.long_cks = add("long_cks", vpx_checksum_key("live", body_len=64), project=A, environment="live")

    def name_of(self, key: Key) -> str:
        for n, k in self.keys.items():
            if k is key:
                return n
        raise KeyError(key.plaintext)

    def policy(self, version: int = POLICY_VERSION, issued_at: Optional[int] = None) -> dict:
        return {
            "version": version,
            "issued_at": NOW if issued_at is None else issued_at,
            "expires_at": None,
            "projects": copy.deepcopy(PROJECTS),
            "keys": copy.deepcopy(self.records),
        }

    def secrets(self) -> list[str]:
        """Every string that must never appear in a response, upstream request or log."""
        out = []
        for k in self.keys.values():
            out.append(k.plaintext)
            if k.secret:
                out.append(k.secret)
            out.extend(k.hashes())
        return out

    def foreign_projects(self, key: Optional[Key]) -> list[str]:
        """Project ids a denial for `key` must not reveal: all outside the key's own realm."""
        owner = self.owner.get(self.name_of(key), {}) if key is not None else {}
        allowed = set()
        if "project" in owner:
            allowed.add(owner["project"])
        if "org" in owner:
            allowed |= {p for p, o in PROJECT_ORG.items() if o == owner["org"]}
        return [p for p in PROJECT_ORG if p not in allowed]


WORLD = World()

# Plugin routes (first match wins). Envoy route names come from harness.DEFAULT_ROUTES.
ROUTES = [
    {"name": "health", "match": {"route_name": "healthz"}, "exempt": True},
    {"name": "preflight", "match": {"methods": ["OPTIONS"]}, "exempt": True},
    {
        "name": "chat",
        "match": {"route_name": "chat"},
        "scopes": ["chat:write"],
        "environments": ["live"],
        "project": {"header": "x-project-id"},
        "require_project": True,
        "model": {"header": "x-model"},
        "deny_browser_requests": True,
    },
    {
        "name": "projects",
        "match": {"path_prefix": "/v1/projects/"},
        "project": {"path_pattern": "/v1/projects/{project}/"},
        "require_project": True,
    },
    {"name": "anthropic", "match": {"path_prefix": "/anthropic/"}, "error_format": "anthropic"},
    {"name": "query", "match": {"path_prefix": "/q/"}, "query_parameter": "api_key"},
    {
        "name": "embeddings",
        "match": {"path_prefix": "/v1/embeddings"},
        "scopes": ["embeddings:read"],
        "model": {"fixed": "text-embedding-3-small"},
    },
    {"name": "sandbox", "match": {"path_prefix": "/sandbox/"}, "environments": ["test"]},
    {"name": "admin", "match": {"host": "admin.example.com"}, "scopes": ["admin"]},
    {"name": "files_delete", "match": {"path_prefix": "/v1/files", "methods": ["DELETE"]}, "scopes": ["files:delete"]},
]


def enforce_config() -> dict:
    return {"mode": "enforce", "routes": copy.deepcopy(ROUTES), "policy": WORLD.policy()}


def shadow_config() -> dict:
    cfg = enforce_config()
    cfg["mode"] = "shadow"
    return cfg


def no_policy_config(fail_open: bool) -> dict:
    return {
        "policy_unavailable": "fail_open" if fail_open else "fail_closed",
        "routes": copy.deepcopy(ROUTES),
    }


def stale_policy_config() -> dict:
    """A snapshot older than max_policy_age_seconds is unusable: fail closed."""
    return {
        "max_policy_age_seconds": 60,
        "routes": copy.deepcopy(ROUTES),
        "policy": WORLD.policy(issued_at=NOW - 3600),
    }


AK_FORMAT = {
    "name": "ak",
    "type": "key_id_secret",
    "prefix": "ak_",
    "separator": ".",
    "key_id": {"charset": "alphanumeric", "min_length": 4, "max_length": 32},
    "secret": {"charset": "base62", "min_length": 16, "max_length": 128},
}


def opaque_format(
    name: str, environments: tuple[str, ...] = ("live", "test"), max_length: int = 64, checksum: str = "none"
) -> dict:
    """A `prefixed_opaque` key format `<name>_<environment>_<base62 body>`."""
    return {
        "name": name,
        "type": "prefixed_opaque",
        "prefix": f"{name}_",
        "environments": list(environments),
        "body": {"charset": "base62", "min_length": 24, "max_length": max_length},
        "checksum": checksum,
    }


CKS_FORMAT = opaque_format("cks", checksum="crc32_base62")
ALT_IDENTITY = {
    "key_id": "x-auth-key-id",
    "project": "x-auth-project",
    "org": "x-auth-org",
    "environment": "x-auth-env",
}


def alt_config() -> dict:
    """Non-default knobs: checksum key format, x-api-key only, small max_credential_bytes,
    spend_cap_status 429, custom identity/error header names, Anthropic errors by default."""
    return {
        "mode": "enforce",
        "credential_sources": ["x-api-key"],
        "max_credential_bytes": 64,
        "key_formats": [AK_FORMAT, CKS_FORMAT],
        "identity_headers": dict(ALT_IDENTITY),
        "error_header": "x-auth-error",
        "spend_cap_status": 429,
        "error_format": "anthropic",
        "deny_browser_requests": True,
        "routes": [{"name": "health", "match": {"route_name": "healthz"}, "exempt": True}],
        "policy": WORLD.policy(),
    }
