"""The bypass battery as data: request variants, keyward's answer to each, and the oracle that
decides whether an upstream hit was a bypass.

`test_bypass.py` sends every variant through two real Envoys (the configuration
`keyward render envoy` writes, and a plain hand-written one without Envoy's own normalization),
each in a case-sensitive and a case-insensitive run, over HTTP/1.1 and HTTP/2.
`docs/bad-inputs.md` lists the same cases, rendered from this file by `scripts/bad_inputs_doc.py`.

An answer is a string: `200` (reaches the upstream), `<status> <code>` (keyward's refusal), or
`envoy <status>` / `envoy reset` (Envoy refuses before keyward runs). `where` overrides the answer
for one setting: `rendered` (the rendered configuration), `folded` (case-insensitive run),
`h2`, or a combination such as `rendered+h2`; the most specific one that applies wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

import realistic_upstream

H1 = "1.1"
H2 = "2"
BOTH = (H1, H2)

MODEL_OK = "gpt-4o-mini"
MODEL_DENIED = "gpt-4o"
# USD per million tokens, as `keyward price set` takes them; micro-USD per million below.
PRICE_INPUT_USD, PRICE_OUTPUT_USD = "0.15", "0.60"
PRICE_INPUT, PRICE_OUTPUT = 150_000, 600_000
BYTES_PER_TOKEN = 4
DEFAULT_MAX_OUTPUT = 4096
CEILING = 1_000_000
MAX_BODY = 65_536
CREDENTIAL_QUERY_NAMES = ("api_key", "api-key", "apikey", "key", "access_token")

# The plugin's route table (first match wins). `ops` matches Envoy's route name, which
# `render envoy --route ops=/ops` (and the plain config) give to the prefix `/ops`.
ROUTES = [
    {"name": "health", "match": {"path_prefix": "/healthz"}, "exempt": True},
    {"name": "secure", "match": {"host": "secure.local"}, "scopes": ["secure"]},
    {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
    {"name": "ops", "match": {"route_name": "ops"}, "scopes": ["admin"]},
    {"name": "chat", "match": {"path_prefix": "/v1/chat/"}, "meter": True, "scopes": ["chat:write"],
     "project": {"header": "x-project-id"}},
    {"name": "projects", "match": {"path_prefix": "/v1/projects/"},
     "project": {"path_pattern": "/v1/projects/{project}/"}, "require_project": True},
    {"name": "query", "match": {"path_prefix": "/q/"}, "query_parameter": "api_key"},
]
ENVOY_ROUTES = {"ops": "/ops"}

# Keys the battery mints with `keyward key create` (flags after `--json`).
PROJECTS = {"proj_alpha": "org_acme", "proj_beta": "org_acme", "proj_gamma": "org_globex"}
KEYS = {
    "plain": ("project key of proj_alpha, scope chat:write", ["--project", "proj_alpha", "--scopes", "chat:write"]),
    "admin": ("project key of proj_alpha, scopes admin, secure, chat:write",
              ["--project", "proj_alpha", "--scopes", "admin,secure,chat:write"]),
    "secure": ("project key of proj_alpha, scopes secure, chat:write", ["--project", "proj_alpha", "--scopes", "secure,chat:write"]),
    "models": (f"project key of proj_alpha, scope chat:write, models [{MODEL_OK}]",
               ["--project", "proj_alpha", "--scopes", "chat:write", "--models", MODEL_OK]),
    "org": (f"org key of org_acme (proj_alpha, proj_beta), scope chat:write, models [{MODEL_OK}]",
            ["--org", "org_acme", "--scopes", "chat:write", "--models", MODEL_OK]),
    "capped": ("project key of proj_alpha, scope chat:write, spend cap $0.000001", ["--project", "proj_alpha", "--scopes", "chat:write", "--spend-cap-usd", "0.000001"]),
    "limited": ("project key of proj_alpha, scope chat:write, 1 request a minute", ["--project", "proj_alpha", "--scopes", "chat:write", "--rpm", "1"]),
}


def plugin_config(case_insensitive: bool = False, mode: str = "enforce") -> dict:
    config = {
        "mode": mode,
        "routes": json.loads(json.dumps(ROUTES)),
        "metering": {
            "report_interval_ms": 300,
            "bytes_per_token": BYTES_PER_TOKEN,
            "reservation_ceiling_microusd": CEILING,
            "max_request_body_bytes": MAX_BODY,
            # Charging nothing for a response without usage makes the compressed-answer case
            # bite: only the unreadable-usage rule then stands between gzip and free requests.
            "missing_usage": "zero",
        },
    }
    if case_insensitive:
        config["case_insensitive_paths"] = True
    return config


def chat_body(model: str = MODEL_DENIED, **extra) -> bytes:
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}
    body.update(extra)
    return json.dumps(body).encode()


# --------------------------------------------------------------------------------------------
# request variants


@dataclass(frozen=True)
class Variant:
    """One request. `key` is presented as `authorization: Bearer`; `{name}` in the target or a
    header value stands for that key's plaintext. HTTP/1.1 sends `host` (when not None) then
    `headers`; HTTP/2 sends `host` as `:authority` (or none) then `headers`."""

    id: str
    group: str
    target: str
    expect: str
    key: Optional[str] = "plain"
    method: str = "GET"
    host: Optional[str] = "api.local"
    headers: tuple = ()
    body: Optional[bytes] = None
    http: tuple = BOTH
    where: dict = field(default_factory=dict)
    note: str = ""
    presents: Optional[str] = None  # a key presented in the query instead

    def answer(self, rendered: bool, folded: bool, version: str) -> str:
        tags = {"rendered" if rendered else "plain"}
        if folded:
            tags.add("folded")
        if version == H2:
            tags.add("h2")
        best, best_size = self.expect, 0
        for condition, answer in self.where.items():
            needed = set(condition.split("+"))
            if needed <= tags and len(needed) > best_size:
                best, best_size = answer, len(needed)
        # Every configuration has a route matched by Envoy route name (`ops`). Where keyward would
        # rewrite the path, the route Envoy chose from the path as sent may not be the one the
        # rewritten path reaches: keyward refuses such a request (docs/configuration.md,
        # "Canonical paths"). The rendered config's Envoy has already normalized dot segments,
        # slashes and escapes, so there only case folding rewrites.
        decided_later = best.startswith("envoy") or best.startswith("400")
        if not decided_later and keyward_rewrites(self.target, rendered, folded):
            return "400 invalid_request"
        return best


_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def keyward_rewrites(target: str, rendered: bool, folded: bool) -> bool:
    """Whether keyward's canonical path differs from the path it receives (the documented rule:
    dot segments and repeated slashes resolved, escapes of unreserved characters decoded, other
    escapes in upper case, and with case folding every letter outside an escape in lower case)."""
    path = target
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1] if "/" in path.split("://", 1)[1] else "/"
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return False
    if not rendered:
        segments = path.split("/")[1:]
        if any(seg in (".", "..") for seg in segments) or "//" in path:
            return True
        for match in re.finditer(r"%([0-9A-Fa-f]{2})", path):
            hex_digits = match.group(1)
            if chr(int(hex_digits, 16)) in _UNRESERVED or hex_digits != hex_digits.upper():
                return True
    if folded:
        # Escaped unreserved letters are decoded first (by keyward, or by Envoy's normalize_path).
        outside_escapes = re.sub(r"%[0-9A-Fa-f]{2}", "", path) + "".join(
            chr(int(m.group(1), 16)) for m in re.finditer(r"%([0-9A-Fa-f]{2})", path)
            if chr(int(m.group(1), 16)) in _UNRESERVED
        )
        if any(c.isupper() for c in outside_escapes):
            return True
    return False


def _v(*args, **kw) -> Variant:
    return Variant(*args, **kw)


ENVOY_REJECTS_ESCAPED_SLASH = {"rendered": "envoy 400"}
ENVOY_RESOLVES = {"rendered": "403 insufficient_scope"}
ENVOY_REJECTS_UNDERSCORE = {"rendered": "envoy 400", "rendered+h2": "envoy reset"}
GZIP = (("accept-encoding", "gzip, br"),)
CHAT = {"method": "POST", "key": "models", "headers": GZIP, "body": chat_body()}
ORG_CHAT = {"method": "POST", "key": "org", "headers": GZIP, "body": chat_body(MODEL_OK)}

VARIANTS: list[Variant] = [
    # ---- the admin route (path_prefix /admin, scope admin) with a key without that scope
    _v("admin", "admin", "/admin/x", "403 insufficient_scope"),
    _v("admin_with_admin_key", "admin", "/admin/x", "200", key="admin"),
    _v("admin_double_slash", "admin", "//admin/x", "403 insufficient_scope"),
    _v("admin_triple_slash", "admin", "///admin/x", "403 insufficient_scope"),
    _v("admin_encoded_letter", "admin", "/%61dmin/x", "403 insufficient_scope"),
    _v("admin_dot_segment", "admin", "/./admin/x", "403 insufficient_scope"),
    _v("admin_encoded_dot_segment", "admin", "/%2e/admin/x", "403 insufficient_scope"),
    _v("admin_upper_case", "admin", "/ADMIN/x", "200", where={"folded": "403 insufficient_scope"},
       note="case-sensitive run: the upstream does not fold case either, so `/ADMIN` is not the admin area"),
    _v("admin_encoded_upper_letter", "admin", "/%41dmin/x", "200", where={"folded": "403 insufficient_scope"},
       note="canonical `/Admin/x`"),
    _v("admin_encoded_slash", "admin", "/x%2F..%2Fadmin", "400 invalid_request", where=ENVOY_REJECTS_ESCAPED_SLASH),
    _v("admin_encoded_slash_lower", "admin", "/admin%2fx", "400 invalid_request", where=ENVOY_REJECTS_ESCAPED_SLASH),
    _v("admin_encoded_backslash", "admin", "/x%5C..%5Cadmin", "400 invalid_request", where=ENVOY_REJECTS_ESCAPED_SLASH),
    _v("admin_backslash", "admin", "/x\\..\\admin", "400 invalid_request", where=ENVOY_RESOLVES,
       note="Envoy's `normalize_path` reads `\\` as `/` and resolves the path first"),
    _v("admin_semicolon", "admin", "/admin;x=1/y", "400 invalid_request"),
    _v("admin_encoded_semicolon", "admin", "/admin%3Bx/y", "400 invalid_request",
       note="a server that decodes before it cuts `;parameters` reads `/admin/y`"),
    _v("admin_nul", "admin", "/admin%00/x", "400 invalid_request", where={"rendered": "envoy 400"}),
    _v("admin_iis_unicode_escape", "admin", "/%u0061dmin/x", "400 invalid_request", note="`%u` escapes are not percent-encoding"),
    _v("fragment_in_target", "admin", "/healthz#/../admin/x", "envoy 400", http=(H1,)),
    _v("asterisk_form", "admin", "*", "envoy 404", method="OPTIONS", http=(H1,)),
    _v("above_root", "admin", "/../admin/x", "400 invalid_request", where=ENVOY_RESOLVES,
       note="Envoy's `normalize_path` stops `..` at the root"),
    _v("above_root_encoded", "admin", "/%2e%2e/admin/x", "400 invalid_request", where=ENVOY_RESOLVES),
    _v("absolute_form_admin", "admin", "http://api.local/admin/x", "403 insufficient_scope", http=(H1,)),
    _v("absolute_form_double_slash", "admin", "http://api.local//admin/x", "403 insufficient_scope", http=(H1,)),
    # ---- the exempt /healthz route used as a way in
    _v("healthz", "health", "/healthz", "200", key=None),
    _v("healthz_sub_path", "health", "/healthz/live", "200", key=None),
    _v("healthz_dot_dot", "health", "/healthz/../admin/secret", "403 insufficient_scope"),
    _v("healthz_encoded_dot_dot", "health", "/healthz/%2e%2e/admin/x", "403 insufficient_scope"),
    _v("healthz_half_encoded_dot_dot", "health", "/healthz/.%2E/admin/x", "403 insufficient_scope"),
    _v("healthz_dot_dot_no_key", "health", "/healthz/../admin/secret", "401 missing_api_key", key=None),
    _v("healthz_semicolon_dot_dot", "health", "/healthz;x=1/../admin", "400 invalid_request", where=ENVOY_RESOLVES),
    _v("healthz_double_encoded_dot_dot", "health", "/healthz/%252e%252e/admin/x", "400 invalid_request"),
    _v("healthzfoo", "health", "/healthzfoo", "401 missing_api_key", key=None,
       note="`/healthz` matches whole segments only"),
    _v("healthzfoo_with_key", "health", "/healthzfoo", "200"),
    # ---- a route chosen by Envoy's route name (render envoy --route ops=/ops)
    _v("ops", "ops", "/ops/x", "403 insufficient_scope"),
    _v("ops_double_slash", "ops", "//ops/x", "403 insufficient_scope"),
    _v("ops_encoded_letter", "ops", "/%6Fps/x", "403 insufficient_scope"),
    _v("ops_dot_dot", "ops", "/healthz/../ops/x", "403 insufficient_scope"),
    _v("ops_upper_case", "ops", "/OPS/x", "200", where={"folded": "403 insufficient_scope"}),
    # ---- the metered chat route; the key's allow-list has only gpt-4o-mini, the body asks gpt-4o
    _v("chat_denied_model", "chat", "/v1/chat/completions", "403 model_not_allowed", **CHAT),
    _v("chat_allowed_model", "chat", "/v1/chat/completions", "200", **{**CHAT, "body": chat_body(MODEL_OK)}),
    _v("chat_double_slash", "chat", "//v1/chat/completions", "403 model_not_allowed", **CHAT),
    _v("chat_inner_double_slash", "chat", "/v1//chat/completions", "403 model_not_allowed", **CHAT),
    _v("chat_dot_segment", "chat", "/v1/./chat/completions", "403 model_not_allowed", **CHAT),
    _v("chat_dot_dot", "chat", "/v1/models/../chat/completions", "403 model_not_allowed", **CHAT),
    _v("chat_encoded_letter", "chat", "/v1/%63hat/completions", "403 model_not_allowed", **CHAT),
    _v("chat_without_trailing_slash", "chat", "/v1/chat", "403 model_not_allowed", **CHAT),
    _v("chat_upper_case", "chat", "/V1/CHAT/completions", "200", where={"folded": "403 model_not_allowed"}, **CHAT),
    _v("chat_get_without_body", "chat", "/v1/chat/completions", "403 model_not_allowed", key="models", headers=GZIP,
       note="no body, so no model: a key with an allow-list is refused"),
    _v("chat_semicolon", "chat", "/v1/chat;v=2/completions", "400 invalid_request", **CHAT),
    _v("chat_encoded_slash", "chat", "/v1%2Fchat/completions", "400 invalid_request", where=ENVOY_REJECTS_ESCAPED_SLASH, **CHAT),
    _v("chat_absolute_form", "chat", "http://api.local//v1/chat/completions", "403 model_not_allowed", http=(H1,), **CHAT),
    # ---- the project-in-path route
    _v("project_own", "projects", "/v1/projects/proj_alpha/x", "200"),
    _v("project_other", "projects", "/v1/projects/proj_beta/x", "403 project_mismatch"),
    _v("project_double_slash", "projects", "/v1/projects//proj_beta/x", "403 project_mismatch"),
    _v("project_dot_dot", "projects", "/v1/projects/proj_alpha/../proj_beta/x", "403 project_mismatch"),
    _v("project_encoded_dot_dot", "projects", "/v1/projects/proj_alpha/%2e%2e/proj_beta/x", "403 project_mismatch"),
    _v("project_encoded_letter", "projects", "/v1/projects/%70roj_beta/x", "403 project_mismatch"),
    _v("project_upper_case", "projects", "/v1/projects/PROJ_BETA/x", "403 project_mismatch"),
    _v("project_semicolon", "projects", "/v1/projects/proj_alpha;x/../proj_beta/x", "400 invalid_request",
       where={"rendered": "403 project_mismatch"}),
    _v("project_encoded_slash", "projects", "/v1/projects/proj_alpha%2F..%2Fproj_beta/x", "400 invalid_request",
       where=ENVOY_REJECTS_ESCAPED_SLASH),
    _v("org_key_own_org", "projects", "/v1/projects/proj_beta/x", "200", key="org"),
    _v("org_key_other_org", "projects", "/v1/projects/proj_gamma/x", "403 project_mismatch", key="org"),
    _v("org_key_other_org_double_slash", "projects", "//v1/projects/proj_gamma/x", "403 project_mismatch", key="org"),
    _v("org_key_other_org_upper_case", "projects", "/V1/PROJECTS/proj_gamma/x", "200", key="org",
       where={"folded": "403 project_mismatch"}),
    _v("org_key_no_project", "projects", "/v1/projects/", "403 project_required", key="org"),
    # ---- the host-matched route (secure.local, scope secure)
    _v("host", "host", "/x", "403 insufficient_scope", host="secure.local"),
    _v("host_with_scoped_key", "host", "/x", "200", host="secure.local", key="secure"),
    _v("host_upper_case", "host", "/x", "403 insufficient_scope", host="SECURE.LOCAL"),
    _v("host_trailing_dot", "host", "/x", "403 insufficient_scope", host="secure.local."),
    _v("host_trailing_dot_and_port", "host", "/x", "403 insufficient_scope", host="secure.local.:80"),
    _v("host_port", "host", "/x", "403 insufficient_scope", host="secure.local:10000"),
    _v("host_user_info", "host", "/x", "400 invalid_request", host="user@secure.local", where={"h2": "envoy reset"},
       note="HTTP/2: Envoy's codec refuses user information in `:authority`"),
    _v("host_percent_encoded", "host", "/x", "400 invalid_request", host="secure%2Elocal"),
    _v("host_list", "host", "/x", "400 invalid_request", host="secure.local,api.local"),
    _v("absolute_form_user_info", "host", "http://user@secure.local/x", "403 insufficient_scope", http=(H1,),
       note="Envoy drops the user information of an absolute URI: `:authority` is `secure.local`"),
    _v("host_repeated", "host", "/x", "400 invalid_request", headers=(("host", "secure.local"),), http=(H1,)),
    _v("authority_and_host_disagree", "host", "/x", "200", headers=(("host", "secure.local"),), http=(H2,),
       note="Envoy's HTTP/2 codec keeps `:authority` and drops the `host` next to it: the upstream gets `api.local`"),
    _v("authority_secure_host_other", "host", "/x", "403 insufficient_scope", host="secure.local",
       headers=(("host", "api.local"),), http=(H2,)),
    _v("host_header_without_authority", "host", "/x", "403 insufficient_scope", host=None,
       headers=(("host", "secure.local"),), http=(H2,)),
    _v("absolute_form_names_secure", "host", "http://secure.local/x", "403 insufficient_scope", http=(H1,)),
    _v("absolute_form_secure_admin", "host", "http://secure.local/admin", "403 insufficient_scope", http=(H1,),
       note="`Host: api.local`; Envoy takes `:authority` from the URI"),
    _v("absolute_form_host_header_secure", "host", "http://api.local/x", "200", host="secure.local", http=(H1,),
       note="Envoy takes the host from the absolute URI and forwards `host: api.local`"),
    _v("forwarded_host_header", "host", "/x", "400 invalid_request", headers=(("x-forwarded-host", "secure.local"),),
       note="frameworks such as Rails take the host from X-Forwarded-Host"),
    _v("forwarded_header_host", "host", "/x", "400 invalid_request", headers=(("forwarded", "host=secure.local"),),
       note="RFC 7239 `Forwarded: host=`"),
    # ---- header spellings
    _v("spoof_identity_underscore", "headers", "/v1/models", "200",
       headers=(("x_keyward_key_id", "kAdmin"), ("x_keyward_project", "proj_beta")), where=ENVOY_REJECTS_UNDERSCORE),
    _v("spoof_identity_mixed_case_underscore", "headers", "/v1/models", "200",
       headers=(("X_Keyward_Project", "proj_beta"),), http=(H1,), where=ENVOY_REJECTS_UNDERSCORE),
    _v("spoof_identity", "headers", "/v1/models", "200",
       headers=(("x-keyward-key-id", "kAdmin"), ("x-keyward-project", "proj_beta"), ("x-keyward-key-id", "kRoot"))),
    _v("spoof_other_keyward_header", "headers", "/v1/models", "200", headers=(("x-keyward-admin", "true"),)),
    _v("spoof_route_project_header_underscore", "headers", "/v1/chat/completions", "200",
       headers=GZIP + (("x-project-id", "proj_alpha"), ("x_project_id", "proj_beta")),
       method="POST", key="org", body=chat_body(MODEL_OK), where=ENVOY_REJECTS_UNDERSCORE),
    _v("spoof_route_project_header_underscore_only", "headers", "/v1/chat/completions", "200",
       headers=GZIP + (("x_project_id", "proj_gamma"),), method="POST", key="org", body=chat_body(MODEL_OK),
       where=ENVOY_REJECTS_UNDERSCORE),
    _v("route_project_header_repeated", "headers", "/v1/chat/completions", "403 project_mismatch",
       headers=GZIP + (("x-project-id", "proj_alpha"), ("x-project-id", "proj_beta")), method="POST", key="org",
       body=chat_body(MODEL_OK), note="servers differ on which copy counts"),
    _v("route_project_header_other_org", "headers", "/v1/chat/completions", "403 project_mismatch",
       headers=GZIP + (("x-project-id", "proj_gamma"),), method="POST", key="org", body=chat_body(MODEL_OK)),
    _v("credential_underscore_only", "headers", "/v1/models", "401 missing_api_key", key=None,
       headers=(("x_api_key", "{admin}"),), where=ENVOY_REJECTS_UNDERSCORE),
    _v("credential_underscore_next_to_bearer", "headers", "/v1/models", "200",
       headers=(("x_api_key", "{admin}"),), where=ENVOY_REJECTS_UNDERSCORE),
    _v("method_override", "headers", "/v1/models", "400 invalid_request", headers=(("x-http-method-override", "DELETE"),)),
    _v("method_override_x_http_method", "headers", "/v1/models", "400 invalid_request", headers=(("x-http-method", "DELETE"),)),
    _v("method_override_x_method_override", "headers", "/v1/models", "400 invalid_request",
       headers=(("x-method-override", "DELETE"),)),
    _v("method_override_underscore", "headers", "/v1/models", "400 invalid_request",
       headers=(("x_http_method_override", "DELETE"),), where=ENVOY_REJECTS_UNDERSCORE),
    _v("path_override_original_url", "headers", "/v1/models", "400 invalid_request", headers=(("x-original-url", "/admin/x"),),
       note="IIS URL Rewrite and older Symfony route by X-Original-URL"),
    _v("path_override_rewrite_url", "headers", "/v1/models", "400 invalid_request", headers=(("x-rewrite-url", "/admin/x"),)),
    # ---- credentials in the query
    _v("query_api_key", "query", "/v1/models?api_key={admin}&a=1", "200"),
    _v("query_api_key_upper_case", "query", "/v1/models?API_KEY={admin}&a=1", "200"),
    _v("query_api_key_encoded_name", "query", "/v1/models?api%5Fkey={admin}&a=1", "200"),
    _v("query_api_key_encoded_letters", "query", "/v1/models?%41pi_Key={admin}", "200"),
    _v("query_key", "query", "/v1/models?a=1&key={admin}", "200"),
    _v("query_apikey", "query", "/v1/models?apikey={admin}", "200"),
    _v("query_api_dash_key", "query", "/v1/models?api-key={admin}", "200"),
    _v("query_access_token", "query", "/v1/models?access_token={admin}", "200"),
    _v("query_key_only", "query", "/v1/models?api_key={plain}", "401 missing_api_key", key=None,
       note="only routes with `query_parameter` read a key from the query"),
    _v("query_key_on_exempt_route", "query", "/healthz?api_key={plain}", "200", key=None),
    _v("query_route", "query", "/q/x?api_key={plain}", "200", key=None, presents="plain"),
    _v("query_route_upper_case_name", "query", "/q/x?API_KEY={plain}", "401 missing_api_key", key=None,
       note="the route reads `api_key` exactly; every spelling is still removed"),
    _v("query_route_repeated", "query", "/q/x?api_key={plain}&api_key={admin}", "401 malformed_api_key", key=None),
    _v("query_route_double_slash", "query", "//q/x?api_key={plain}&API_KEY={admin}", "200", key=None, presents="plain"),
]

VARIANT_BY_ID = {v.id: v for v in VARIANTS}
assert len(VARIANT_BY_ID) == len(VARIANTS), "variant ids must be unique"

# --------------------------------------------------------------------------------------------
# the oracle: the route table applied to the upstream's own reading of the request


def segment_prefix(prefix: str, path: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def oracle_route(path: str, host: str) -> str:
    """The route the upstream's reading falls under, by the same table (first match wins)."""
    if segment_prefix("/healthz", path):
        return "health"
    if host == "secure.local":
        return "secure"
    for name, prefix in (("admin", "/admin"), ("ops", "/ops"), ("chat", "/v1/chat"),
                         ("projects", "/v1/projects"), ("query", "/q")):
        if segment_prefix(prefix, path):
            return name
    return "fallback"


ROUTE_SCOPES = {r["name"]: r.get("scopes", []) for r in ROUTES}


@dataclass
class KeyFacts:
    """What the battery knows of a minted key."""

    name: str
    id: str
    plaintext: str
    scopes: list
    models: Optional[list]
    project: Optional[str]
    org: str

    def allowed_projects(self) -> set:
        if self.project:
            return {self.project}
        return {p for p, o in PROJECTS.items() if o == self.org}


GUARDED_HEADERS = ("authorization", "x-api-key", "x-project-id")
IDENTITY_HEADERS = ("x-keyward-key-id", "x-keyward-project", "x-keyward-org", "x-keyward-environment")


def cgi(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def violations(hit, key: Optional[KeyFacts], keys: dict) -> list[str]:
    """Every way `hit` breaks the route table as the upstream reads it. Empty: no bypass."""
    found = hygiene_violations(hit, keys)
    found += route_violations(hit, key)
    return sorted(set(found))


def hygiene_violations(hit, keys: dict, shadow: bool = False) -> list[str]:
    """Credentials or client-sent trusted headers that reached the upstream, in any spelling."""
    found: list[str] = []
    # credentials and spoofed headers, in any spelling a CGI server merges
    for name in ("authorization", "x-api-key"):
        if cgi(name) in hit.cgi:
            found.append(f"a credential header reached the upstream ({cgi(name)})")
    text = hit.text()
    for other in keys.values():
        if other.plaintext in text or other.plaintext.split(".", 1)[-1] in text:
            found.append(f"key {other.name} (or its secret) reached the upstream")
    for name in (n.lower() for n, _ in hit.headers):
        guarded = cgi(name) in {cgi(g) for g in GUARDED_HEADERS} or cgi(name).startswith("HTTP_X_KEYWARD_")
        if guarded and name not in GUARDED_HEADERS + IDENTITY_HEADERS + ("x-keyward-shadow-denied",):
            found.append(f"header {name!r} reached the upstream: a CGI server reads it as {cgi(name)}")
    for name in IDENTITY_HEADERS + ("x-keyward-shadow-denied",):
        if len(hit.header_all(name)) > 1:
            found.append(f"{name} arrived {len(hit.header_all(name))} times: {hit.header_all(name)}")
    if not shadow and hit.header_all("x-keyward-shadow-denied"):
        found.append("a client-sent x-keyward-shadow-denied reached the upstream")
    for name in (n.lower() for n, _ in hit.headers):
        if name.startswith("x-keyward-") and name not in IDENTITY_HEADERS + ("x-keyward-shadow-denied",):
            found.append(f"client-sent {name} reached the upstream")
    for pname in realistic_upstream.query_names(hit.query):
        if pname.lower() in CREDENTIAL_QUERY_NAMES:
            found.append(f"credential query parameter {pname!r} reached the upstream")
    return found


def route_violations(hit, key: Optional[KeyFacts]) -> list[str]:
    """Readings of the hit's path and host that fall under a route whose requirements the hit
    does not carry."""
    found: list[str] = []
    key_ids = hit.header_all("x-keyward-key-id")
    identity = None
    if key_ids:
        if key is None or key_ids != [key.id]:
            found.append(f"x-keyward-key-id {key_ids} is not the presented key's id")
        else:
            identity = key
            project = hit.header("x-keyward-project")
            if project is not None and project not in key.allowed_projects():
                found.append(f"x-keyward-project {project} is not a project of key {key.name}")
            if hit.header_all("x-keyward-org") != [key.org]:
                found.append(f"x-keyward-org {hit.header_all('x-keyward-org')} is not {key.org}")
    elif any(hit.header_all(h) for h in IDENTITY_HEADERS):
        found.append("identity headers without x-keyward-key-id")

    for reading, path in hit.paths.items():
        for host in sorted(hit.hosts) or [""]:
            route = oracle_route(path, host)
            where = f"the upstream reads {path!r} on host {host!r} ({reading}): route {route}"
            if route == "health":
                continue
            if identity is None:
                found.append(f"{where}, without keyward's identity")
                continue
            missing = [s for s in ROUTE_SCOPES.get(route, []) if s not in identity.scopes and "*" not in identity.scopes]
            if missing:
                found.append(f"{where}, key {identity.name} lacks scope {missing}")
            if route == "chat":
                found += [f"{where}: {problem}" for problem in chat_problems(hit, identity)]
            if route == "projects":
                found += [f"{where}: {problem}" for problem in project_problems(hit, path)]
    return found


def upstream_may_compress(hit) -> bool:
    """Whether the provider was allowed a compressed answer: any `accept-encoding` it received
    but `identity`. Absent is fine: providers compress only when asked (and an answer compressed
    anyway is charged its reservation)."""
    return any(value.strip().lower() != "identity" for value in hit.header_all("accept-encoding"))


def chat_problems(hit, key: KeyFacts) -> list[str]:
    problems = []
    if hit.method != "POST":
        return problems
    if upstream_may_compress(hit):
        problems.append(f"not metered (accept-encoding {hit.header_all('accept-encoding')})")
    _last, models, _limit, _n = realistic_upstream.request_limits(hit.body)
    if key.models is not None:
        for model in models or [None]:
            if model not in key.models:
                problems.append(f"model {model!r} is not on key {key.name}'s allow-list")
    project = hit.header("x-keyward-project")
    for value in hit.cgi.get(cgi("x-project-id"), []):
        if value.strip() != project:
            problems.append(f"the upstream reads project {value!r} from x-project-id, keyward checked {project!r}")
    return problems


def project_problems(hit, path: str) -> list[str]:
    match = re.match(r"^/v1/projects/([^/]*)", path, re.IGNORECASE)
    named = match.group(1) if match else ""
    project = hit.header("x-keyward-project")
    if named and named != project:
        return [f"acts on project {named!r}, keyward checked {project!r}"]
    if not named and project is None:
        return ["no project named and none checked"]
    return []


# --------------------------------------------------------------------------------------------
# request bodies on the metered route: the reservation keyward must hold, or its refusal


def price(input_tokens: int, output_tokens: int) -> int:
    return -(-(input_tokens * PRICE_INPUT + output_tokens * PRICE_OUTPUT) // 1_000_000)


def reservation(body: bytes, output_limit: Optional[int], choices: int = 1) -> int:
    """min(ceiling, price(⌈bytes / bytes_per_token⌉, output_limit × choices)): the documented
    formula; output_limit None means the default."""
    output = (DEFAULT_MAX_OUTPUT if output_limit is None else output_limit) * max(choices, 1)
    return min(CEILING, price(-(-len(body) // BYTES_PER_TOKEN), output))


@dataclass(frozen=True)
class BodyCase:
    """A metered request body (POST /v1/chat/completions). `expect` is `reserve` (charged exactly
    its reservation, with the output limit `output` × `choices`), `usage` (charged the provider's
    usage, priced) or `<status> <code>`. `mode` is the upstream's behaviour: `negative` (the
    default) reports a negative output count, so keyward charges the reservation and the charge
    shows what it reserved; `fraction`, `string`, `huge` are other invalid usage; `gzip`
    compresses the answer whatever the request asked; `` is an honest provider."""

    id: str
    body: bytes
    expect: str
    output: Optional[int] = None
    choices: int = 1
    mode: str = "negative"
    key: str = "models"
    headers: tuple = ()
    chunked: bool = False
    note: str = ""


def _body(**fields) -> bytes:
    doc = {"model": MODEL_OK, "messages": [{"role": "user", "content": "hello there"}]}
    doc.update(fields)
    return json.dumps(doc).encode()


def _raw(text: str) -> bytes:
    return text.replace("MSGS", '"messages":[{"role":"user","content":"hello there"}]').encode()


BODY_CASES: list[BodyCase] = [
    BodyCase("conflicting_max_fields", _body(max_completion_tokens=1, max_tokens=4000), "reserve", output=4000),
    BodyCase("max_output_tokens_largest", _body(max_tokens=10, max_output_tokens=300), "reserve", output=300),
    BodyCase("generation_config", _body(generationConfig={"maxOutputTokens": 700, "candidateCount": 3}), "reserve",
             output=700, choices=3),
    BodyCase("n_128", _body(max_tokens=20, n=128), "reserve", output=20, choices=128),
    BodyCase("best_of_over_n", _body(max_tokens=20, n=2, best_of=5), "reserve", output=20, choices=5),
    BodyCase("no_limit", _body(), "reserve", output=None, note="the default, 4096"),
    BodyCase("negative_limit", _body(max_tokens=-5), "reserve", output=None, note="ignored: the default"),
    BodyCase("fractional_limit", _body(max_tokens=1.5), "reserve", output=2),
    BodyCase("exponent_limit", _raw('{"model":"gpt-4o-mini",MSGS,"max_tokens":4e3}'), "reserve", output=4000),
    BodyCase("overflowing_exponent_limit", _raw('{"model":"gpt-4o-mini",MSGS,"max_tokens":1e400}'), "reserve",
             output=10**400, note="the ceiling"),
    BodyCase("string_limit", _body(max_tokens="4000"), "reserve", output=4000),
    BodyCase("duplicate_limit_keys", _raw('{"model":"gpt-4o-mini",MSGS,"max_tokens":1,"max_tokens":4000}'), "reserve",
             output=4000),
    BodyCase("escaped_limit_key", _raw('{"model":"gpt-4o-mini",MSGS,"max_tokens":1,"max\\u005ftokens":4000}'), "reserve",
             output=4000),
    BodyCase("huge_limit", _body(max_tokens=10**20), "reserve", output=10**20, note="the ceiling"),
    BodyCase("duplicate_model_same", _raw('{"model":"gpt-4o-mini","model":"gpt-4o-mini",MSGS,"max_tokens":5}'), "reserve",
             output=5),
    BodyCase("duplicate_model_different", _raw('{"model":"gpt-4o-mini",MSGS,"model":"gpt-4o"}'), "400 invalid_request_body"),
    BodyCase("duplicate_model_escaped_key", _raw('{"model":"gpt-4o-mini",MSGS,"mod\\u0065l":"gpt-4o"}'),
             "400 invalid_request_body"),
    BodyCase("model_not_a_string", _raw('{"model":["gpt-4o"],MSGS}'), "403 model_not_allowed"),
    BodyCase("model_denied", _body(model=MODEL_DENIED), "403 model_not_allowed"),
    BodyCase("not_json", b"model=gpt-4o", "400 invalid_request_body"),
    BodyCase("utf16_body", _body(model=MODEL_DENIED).decode().encode("utf-16"), "400 invalid_request_body"),
    BodyCase("byte_order_mark", b"\xef\xbb\xbf" + _body(model=MODEL_DENIED), "400 invalid_request_body"),
    BodyCase("deep_nesting", b'{"model":"gpt-4o-mini","x":' + b"[" * 200 + b"]" * 200 + b"}", "reserve", output=None,
             note="200 levels: only the top-level fields are read"),
    BodyCase("usage_fraction", _body(max_tokens=30), "reserve", output=30, mode="fraction",
             note="the provider reports 30.5 output tokens"),
    BodyCase("usage_string", _body(max_tokens=30), "reserve", output=30, mode="string"),
    BodyCase("usage_huge", _body(max_tokens=30), "reserve", output=30, mode="huge", note="10^20 output tokens"),
    BodyCase("compressed_answer", _body(max_tokens=30), "reserve", output=30, mode="gzip",
             note="the provider compresses unasked"),
    BodyCase("client_accepts_gzip", _body(max_tokens=30), "usage", mode="", headers=(("accept-encoding", "gzip"),),
             note="keyward asks the provider for `identity`, so the usage stays readable"),
    BodyCase("client_accepts_identity_and_gzip", _body(max_tokens=30), "usage", mode="",
             headers=(("accept-encoding", "identity"), ("accept-encoding", "gzip")),
             note="a repeated header: the copy that allows gzip is what counts"),
    BodyCase("client_without_accept_encoding", _body(max_tokens=30), "usage", mode="",
             note="nothing to rewrite: the provider does not compress unasked, so keyward saves the header edit"),
    BodyCase("body_over_limit", _body(max_tokens=5, pad="x" * MAX_BODY), "413 request_too_large",
             note="refused on its content-length, before the body"),
    BodyCase("chunked_body_over_limit", _body(max_tokens=5, pad="x" * MAX_BODY), "413 request_too_large", chunked=True),
    BodyCase("compressed_request_body", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", "400 invalid_request_body",
             headers=(("content-encoding", "gzip"),)),
]
BODY_CASE_BY_ID = {c.id: c for c in BODY_CASES}
assert len(BODY_CASE_BY_ID) == len(BODY_CASES)


# --------------------------------------------------------------------------------------------
# shadow mode: every refusal, early or late, is a dry run


@dataclass(frozen=True)
class ShadowCase:
    """Sent to an Envoy in `mode: shadow`: the request must pass without identity headers and
    with `x-keyward-shadow-denied: code`."""

    id: str
    target: str
    code: str
    key: str = "plain"
    method: str = "GET"
    body: Optional[bytes] = None
    repeat: int = 1  # sent this many times; the last one is the refusal
    note: str = ""


SHADOW_CASES: list[ShadowCase] = [
    ShadowCase("shadow_scope", "/admin/x", "insufficient_scope"),
    ShadowCase("shadow_invalid_path", "/admin%2Fx", "invalid_request"),
    ShadowCase("shadow_model_not_allowed", "/v1/chat/completions", "model_not_allowed", key="models", method="POST",
               body=chat_body(MODEL_DENIED)),
    ShadowCase("shadow_conflicting_model", "/v1/chat/completions", "invalid_request_body", key="models", method="POST",
               body=_raw('{"model":"gpt-4o-mini",MSGS,"model":"gpt-4o"}')),
    ShadowCase("shadow_spend_cap", "/v1/chat/completions", "spend_cap_exceeded", key="capped", method="POST",
               body=chat_body(MODEL_OK)),
    ShadowCase("shadow_rate_limited", "/v1/models", "rate_limited", key="limited", repeat=2),
    ShadowCase("shadow_body_too_large", "/v1/chat/completions", "request_too_large", key="models", method="POST",
               body=_body(max_tokens=5, pad="x" * MAX_BODY)),
]


# --------------------------------------------------------------------------------------------
# the tables in docs/bad-inputs.md

BEGIN = "<!-- generated by scripts/bad_inputs_doc.py from integration/bypass_cases.py: begin -->"
END = "<!-- generated from bypass_cases.py: end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _answer_cell(v: Variant) -> str:
    out = [f"`{v.expect}`"]
    for condition, answer in sorted(v.where.items()):
        out.append(f"{condition}: `{answer}`")
    # Where keyward's own rewrite rule changes the answer (route-name routes, see answer()).
    settings = [("plain", False, False), ("folded", False, True), ("rendered+folded", True, True)]
    for label, rendered, folded in settings:
        wanted = v.answer(rendered, folded, H1)
        if wanted == "400 invalid_request" and wanted != v.expect and label not in v.where:
            out.append(f"{label}: `{wanted}` (path rewritten where routes match Envoy route names)")
    return "<br>".join(out)


def _request_cell(v: Variant) -> str:
    parts = [f"`{v.method} {_cell(v.target)}`"]
    if v.host != "api.local" or any(k == "host" for k, _ in v.headers):
        parts.append("no host" if v.host is None else f"host `{v.host}`")
    parts += [f"`{k}: {_cell(val)}`" for k, val in v.headers]
    if v.body is not None:
        parts.append(f"body model `{json.loads(v.body)['model']}`")
    return "<br>".join(parts)


def render_variants() -> str:
    rows = ["| id | HTTP | request | key | answer | note |", "|---|---|---|---|---|---|"]
    for v in VARIANTS:
        version = "1.1, 2" if v.http == BOTH else v.http[0]
        rows.append(f"| `{v.id}` | {version} | {_request_cell(v)} | {v.key or 'none'} | {_answer_cell(v)} | {_cell(v.note)} |")
    return "\n".join(rows)


def _body_cell(body: bytes) -> str:
    text = body.decode("latin-1")
    text = re.sub(r'"messages": ?\[\{"role": ?"user", ?"content": ?"hello there"\}\]', '"messages":[…]', text)
    shown = "".join(c if 0x20 <= ord(c) < 0x7F or c == "…" else f"\\x{ord(c):02x}" for c in text)
    if len(shown) > 160:
        shown = shown[:120] + f"… ({len(body)} bytes)"
    return "`" + _cell(shown) + "`"


def render_bodies() -> str:
    rows = ["| id | body | upstream | answer | note |", "|---|---|---|---|---|"]
    for c in BODY_CASES:
        if c.expect == "reserve":
            limit = "default 4096" if c.output is None else f"10^{len(str(c.output)) - 1}" if c.output > 10**9 else f"{c.output}"
            answer = f"200, charged the reservation: output {limit} × {c.choices}"
        elif c.expect == "usage":
            answer = "200, charged the provider's usage"
        else:
            answer = f"`{c.expect}`"
        extra = [f"`{k}: {v}`" for k, v in c.headers] + (["chunked"] if c.chunked else [])
        mode = {"": "honest", "negative": "reports negative usage"}.get(c.mode, c.mode)
        if c.expect not in ("reserve", "usage"):
            mode = "never reached"
        body = "<br>".join([_body_cell(c.body)] + extra)
        rows.append(f"| `{c.id}` | {body} | {mode} | {answer} | {_cell(c.note)} |")
    return "\n".join(rows)


def render_shadow() -> str:
    rows = ["| id | request | key | `x-keyward-shadow-denied` |", "|---|---|---|---|"]
    for c in SHADOW_CASES:
        times = f" (×{c.repeat})" if c.repeat > 1 else ""
        rows.append(f"| `{c.id}` | `{c.method} {c.target}`{times} | {c.key} | `{c.code}` |")
    return "\n".join(rows)


def render_keys() -> str:
    rows = ["| key | what it is |", "|---|---|"]
    rows += [f"| {name} | {meaning} |" for name, (meaning, _flags) in KEYS.items()]
    return "\n".join(rows)


def render_generated() -> str:
    return "\n\n".join([
        BEGIN, "#### Keys", render_keys(), "#### Requests", render_variants(),
        "#### Metered request bodies", render_bodies(), "#### Shadow mode", render_shadow(), END,
    ])


def replace_generated(doc: str) -> str:
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    return doc[:start] + render_generated() + doc[end:]
