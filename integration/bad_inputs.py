"""The bad-input battery as data: what is sent, over which HTTP version, and what must happen.

`test_bad_inputs.py` runs every case against a real Envoy; `docs/bad-inputs.md` shows the same
cases as a table, rendered by `render_table()` (`scripts/bad_inputs_doc.py` rewrites it, and a
test fails when the committed table differs from the data).

Header values are templates. `{name}` stands for a key of `KEYS` (real keys, generated per
session, so the table shows names and never secrets); `{name.id}` and `{name.secret}` are the
parts of a `key_id_secret` key. Other characters are sent as the byte of the same number
(latin-1), so "\\xff" is the byte 0xff and "\\r\\n" is CR LF. `Rep` repeats a template.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Optional, Union

import world
from keys import Key, ak_key, rand_base62, vpx_key

W = world.WORLD

H1 = "1.1"
H2 = "2"
BOTH = (H1, H2)
PSEUDO = (":method", ":scheme", ":path", ":authority")

# --------------------------------------------------------------------------------------------
# keys


@dataclass(frozen=True)
class KeyRef:
    key: Key
    meaning: str


# A key format whose keys can be longer than max_credential_bytes (256, the default): the
# default formats stop at 164 bytes (`ak_` + 32 + `.` + 128), so without it "a key at exactly
# the limit" could never be well-formed. The battery's Envoy adds it to the default formats.
VPX_FORMAT = world.opaque_format("vpx")
LNG_FORMAT = world.opaque_format("lng", environments=("live",), max_length=1024)
MAX_CREDENTIAL_BYTES = 256  # the default, which the battery's configuration keeps


def _lng(total: int) -> Key:
    key = vpx_key("live", body_len=total - len("lng_live_"), prefix="lng_")
    assert len(key.plaintext) == total
    return key


def _ak(key_id_len: int, secret_len: int) -> Key:
    return ak_key(key_id="k" + rand_base62(key_id_len - 1), secret_len=secret_len)


KEYS: dict[str, KeyRef] = {
    "alpha": KeyRef(W.alpha, "active `ak_` key of proj_alpha (46 bytes), the world's `alpha`"),
    "vpx": KeyRef(W.alpha_vpx, "active `vpx_live_` key of proj_alpha (41 bytes)"),
    "revoked": KeyRef(W.revoked, "revoked `ak_` key"),
    "paused": KeyRef(W.paused, "paused `ak_` key"),
    "unknown": KeyRef(ak_key(), "well-formed `ak_` key that is not in the policy"),
    "ak164": KeyRef(_ak(32, 128), "well-formed `ak_` key of the longest shape (32-char id, 128-char secret: 164 bytes), not in the policy"),
    "ak165": KeyRef(_ak(32, 129), "`ak_` key with a 129-char secret (165 bytes): one past the format's limit"),
    "lng256": KeyRef(_lng(MAX_CREDENTIAL_BYTES), "active `lng_live_` key of proj_alpha, exactly max_credential_bytes (256) long"),
    "lng256x": KeyRef(_lng(MAX_CREDENTIAL_BYTES), "well-formed 256-byte `lng_live_` key that is not in the policy"),
    "lng257": KeyRef(_lng(MAX_CREDENTIAL_BYTES + 1), "well-formed `lng_live_` key of 257 bytes: one past max_credential_bytes"),
}

# Keys that are allowed, and the identity the upstream must receive for them.
ALLOWED_IDENTITY = {
    name: {
        "x-keyward-key-id": KEYS[name].key.id,
        "x-keyward-project": "proj_alpha",
        "x-keyward-org": world.ORG,
        "x-keyward-environment": "live",
    }
    for name in ("alpha", "vpx", "lng256")
}


def battery_config() -> dict:
    """The world's enforce configuration, with the `lng` format and the `lng256` key added."""
    cfg = world.enforce_config()
    cfg["key_formats"] = [copy.deepcopy(world.AK_FORMAT), copy.deepcopy(VPX_FORMAT), copy.deepcopy(LNG_FORMAT)]
    cfg["policy"]["keys"].append(
        KEYS["lng256"].key.record(project="proj_alpha", environment="live", status="active", scopes=["*"], label="lng256")
    )
    return cfg


def secrets() -> list[str]:
    """Every key, secret and hash the battery uses: none may appear in a reply or upstream."""
    out = list(W.secrets())
    for ref in KEYS.values():
        out.append(ref.key.plaintext)
        if ref.key.secret:
            out.append(ref.key.secret)
        out.extend(ref.key.hashes())
    return out


# --------------------------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class Rep:
    """`text` (a template) `count` times, joined by `sep`."""

    text: str
    count: int
    sep: str = ""


Value = Union[str, tuple]  # a template, or a tuple of templates and Reps

_PLACEHOLDER = re.compile(r"\{([a-z0-9]+)(?:\.(id|secret))?\}")


def _resolve(template: str) -> str:
    def sub(m: re.Match) -> str:
        key = KEYS[m.group(1)].key
        part = m.group(2)
        if part is None:
            return key.plaintext
        value = key.id if part == "id" else key.secret
        assert value is not None, f"{m.group(0)}: not a key_id_secret key"
        return value

    return _PLACEHOLDER.sub(sub, template)


def _parts(value: Value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def materialize(value: Value) -> bytes:
    """The bytes sent on the wire for a header value."""
    out = []
    for part in _parts(value):
        if isinstance(part, Rep):
            out.append(part.sep.join([_resolve(part.text)] * part.count))
        else:
            out.append(_resolve(part))
    return "".join(out).encode("latin-1")


def key_names(value: Value) -> list[str]:
    names = []
    for part in _parts(value):
        text = part.text if isinstance(part, Rep) else part
        names += [m.group(1) for m in _PLACEHOLDER.finditer(text)]
    return names


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\r":
            out.append("\\r")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) >= 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ch == "|":
            out.append("\\|")
        else:
            out.append(ch)
    return "".join(out)


def _show_spaces(text: str) -> str:
    """Leading and trailing spaces, and runs of spaces, as ␠, so that they can be seen."""
    text = re.sub(r"  +", lambda m: "␠" * len(m.group(0)), text)
    text = re.sub(r"^ +| +$", lambda m: "␠" * len(m.group(0)), text)
    return text


def render_value(value: Value) -> str:
    out = []
    for part in _parts(value):
        if isinstance(part, Rep):
            text = _escape(part.text).replace(" ", "␠")
            sep = f', joined by "{_escape(part.sep)}"' if part.sep else ""
            out.append(f"⟨{text} ×{part.count}{sep}⟩")
        else:
            out.append(_escape(part))
    return _show_spaces("".join(out))


# --------------------------------------------------------------------------------------------
# expectations


@dataclass(frozen=True)
class Expect:
    """What must happen.

    outcome:
      allow        200 from the upstream, with the identity of `key`; no credential and no
                   client-sent x-keyward-* upstream
      exempt       200 from the upstream on an exempt route; no credential, no x-keyward-* at all
      deny         keyward's local reply: `status`, `x-keyward-error: code`, upstream never reached
      envoy_reply  Envoy's HTTP/1.1 codec answers `status` with the plain-text `body`
      envoy_close  Envoy's HTTP/2 codec closes the connection without a response
      envoy_reset  Envoy's HTTP/2 codec resets the stream with `reset`
    For envoy_*: the filter never runs, the upstream is never reached, and Envoy counts the
    request in `stat`.
    """

    outcome: str
    status: Optional[int] = None
    code: Optional[str] = None
    key: Optional[str] = None
    body: Optional[str] = None
    reset: Optional[str] = None
    stat: Optional[str] = None

    @property
    def by_envoy(self) -> bool:
        return self.outcome.startswith("envoy_")


def allow(key: str) -> Expect:
    assert key in ALLOWED_IDENTITY, key
    return Expect("allow", status=200, key=key)


def exempt() -> Expect:
    return Expect("exempt", status=200)


def deny(status: int, code: str) -> Expect:
    return Expect("deny", status=status, code=code)


MALFORMED = deny(401, "malformed_api_key")
H1_PROTOCOL_ERROR = "http.ingress.downstream_cx_protocol_error"


def bad_request() -> Expect:
    return Expect("envoy_reply", status=400, body="Bad Request", stat=H1_PROTOCOL_ERROR)


def too_large() -> Expect:
    return Expect("envoy_reply", status=431, body="Request Header Fields Too Large", stat=H1_PROTOCOL_ERROR)


def h2_close() -> Expect:
    return Expect("envoy_close", stat="http2.rx_messaging_error")


def h2_reset(stat: str) -> Expect:
    return Expect("envoy_reset", reset="INTERNAL_ERROR", stat=stat)


# --------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class Case:
    """One request. Every request also carries `host: api.local` (HTTP/2: the pseudo-headers
    `:method GET`, `:scheme http`, `:path`, `:authority api.local`, unless `headers` names one)
    and a unique `x-request-id`, before `headers`; `pad` more headers `x-pad-<i>: v` follow."""

    id: str
    http: tuple
    headers: tuple
    expect: Expect
    path: str = "/v1/models"
    pad: int = 0
    note: str = ""

    def fields(self, version: str) -> int:
        """Header lines (HTTP/1.1) or header fields with pseudo-headers (HTTP/2) in total."""
        names = {n for n, _ in self.headers}
        added = ["host"] if version == H1 else [p for p in PSEUDO if p not in names]
        return len(added) + 1 + len(self.headers) + self.pad  # + 1: x-request-id


def _h(*pairs) -> tuple:
    return tuple(pairs)


BEARER_ALPHA = ("authorization", "Bearer {alpha}")
SPOOF_IDENTITY = (
    ("x-keyward-key-id", "kAdmin"),
    ("x-keyward-project", "proj_other"),
    ("x-keyward-org", "org_globex"),
    ("x-keyward-environment", "test"),
    ("x-keyward-shadow-denied", "none"),
)
SPOOF_OTHER = (("x-keyward-error", "none"), ("x-keyward-admin", "true"))

CASES: list[Case] = [
    # ---- no credential, empty credential, schemes
    Case("no_credential", BOTH, _h(), deny(401, "missing_api_key")),
    Case("empty_authorization", BOTH, _h(("authorization", "")), MALFORMED),
    Case("empty_x_api_key", BOTH, _h(("x-api-key", "")), MALFORMED),
    Case("bearer_only", BOTH, _h(("authorization", "Bearer")), MALFORMED),
    Case("bearer_and_space_only", BOTH, _h(("authorization", "Bearer ")), MALFORMED),
    Case("valid_bearer", BOTH, _h(BEARER_ALPHA), allow("alpha")),
    Case("valid_x_api_key", BOTH, _h(("x-api-key", "{vpx}")), allow("vpx")),
    Case("bearer_lower_case", BOTH, _h(("authorization", "bearer {alpha}")), allow("alpha"), note="the scheme is case-insensitive"),
    Case("bearer_upper_case", BOTH, _h(("authorization", "BEARER {alpha}")), allow("alpha")),
    Case("bearer_extra_spaces", BOTH, _h(("authorization", "Bearer    {alpha}")), allow("alpha")),
    Case("bearer_tab_separator", BOTH, _h(("authorization", "Bearer\t{alpha}")), allow("alpha")),
    Case("basic_scheme", BOTH, _h(("authorization", "Basic dXNlcjpwYXNzd29yZA==")), MALFORMED),
    Case("token_scheme", BOTH, _h(("authorization", "Token {alpha}")), MALFORMED),
    Case("no_scheme", BOTH, _h(("authorization", "{alpha}")), MALFORMED),
    Case("bearer_without_space", BOTH, _h(("authorization", "Bearer{alpha}")), MALFORMED),
    Case("space_inside_key", BOTH, _h(("authorization", "Bearer ak_{alpha.id}. {alpha.secret}")), MALFORMED),
    Case("tab_inside_key", BOTH, _h(("x-api-key", "ak_{alpha.id}\t.{alpha.secret}")), MALFORMED),
    Case("two_tokens", BOTH, _h(("authorization", "Bearer {alpha} {alpha}")), MALFORMED),
    Case("unknown_key", BOTH, _h(("authorization", "Bearer {unknown}")), deny(401, "invalid_api_key")),
    Case("revoked_key", BOTH, _h(("authorization", "Bearer {revoked}")), deny(401, "key_revoked")),
    Case("paused_key", BOTH, _h(("x-api-key", "{paused}")), deny(403, "key_paused")),
    Case("mixed_case_header_names", (H1,), _h(("AUTHORIZATION", "Bearer {alpha}"), ("X-Api-Key", "{alpha}")), allow("alpha")),
    # ---- two sources, repeated headers
    Case("same_key_authorization_and_x_api_key", BOTH, _h(BEARER_ALPHA, ("x-api-key", "{alpha}")), allow("alpha"), note="both copies are removed"),
    Case("different_keys_authorization_and_x_api_key", BOTH, _h(BEARER_ALPHA, ("x-api-key", "{vpx}")), MALFORMED),
    Case("valid_key_and_junk_in_other_source", BOTH, _h(BEARER_ALPHA, ("x-api-key", "junk")), MALFORMED),
    Case("duplicate_authorization_same", BOTH, _h(BEARER_ALPHA, BEARER_ALPHA), MALFORMED,
         note="Envoy joins repeated `authorization` into one value with `,`"),
    Case("duplicate_authorization_different", BOTH, _h(BEARER_ALPHA, ("authorization", "Bearer {vpx}")), MALFORMED),
    Case("authorization_split_across_two_fields", BOTH, _h(("authorization", "Bearer"), ("authorization", "{alpha}")), MALFORMED,
         note="arrives as `Bearer,{alpha}`"),
    Case("duplicate_x_api_key_same", BOTH, _h(("x-api-key", "{alpha}"), ("x-api-key", "{alpha}")), MALFORMED,
         note="`x-api-key` stays two headers: refused as repeated"),
    Case("duplicate_x_api_key_different", BOTH, _h(("x-api-key", "{alpha}"), ("x-api-key", "{vpx}")), MALFORMED),
    Case("key_in_split_cookie", BOTH, _h(("cookie", "api_key=ak_{alpha.id}"), ("cookie", ".{alpha.secret}")), deny(401, "missing_api_key"),
         note="cookies are never a credential source (HTTP/2: Envoy joins the crumbs with `; `)"),
    # ---- folding, whitespace, bytes
    Case("obs_fold_after_scheme", (H1,), _h(("authorization", "Bearer\r\n {alpha}")), allow("alpha"),
         note="Envoy unfolds obs-fold into a space"),
    Case("obs_fold_inside_key", (H1,), _h(("x-api-key", "ak_{alpha.id}\r\n\t.{alpha.secret}")), MALFORMED),
    Case("obs_fold_h2", (H2,), _h(("authorization", "Bearer\r\n {alpha}")), h2_close()),
    Case("trailing_tab_x_api_key", BOTH, _h(("x-api-key", "{alpha}\t")), allow("alpha")),
    Case("trailing_spaces_bearer", BOTH, _h(("authorization", "Bearer {alpha}   ")), allow("alpha")),
    Case("leading_space_x_api_key", BOTH, _h(("x-api-key", " {alpha}")), allow("alpha")),
    Case("invalid_utf8_after_key", BOTH, _h(("x-api-key", "{alpha}\xff\xfe")), MALFORMED),
    Case("invalid_utf8_inside_bearer", BOTH, _h(("authorization", "Bearer ak_{alpha.id}.\xe9{alpha.secret}")), MALFORMED),
    Case("utf8_non_ascii_after_key", BOTH, _h(("x-api-key", "{alpha}\xc3\xa9")), MALFORMED, note="valid UTF-8 `é`"),
    Case("nul_inside_key", (H1,), _h(("x-api-key", "ak_{alpha.id}\x00.{alpha.secret}")), bad_request()),
    Case("nul_after_key", (H1,), _h(("x-api-key", "{alpha}\x00")), bad_request()),
    Case("nul_inside_key_h2", (H2,), _h(("x-api-key", "ak_{alpha.id}\x00.{alpha.secret}")), h2_close()),
    Case("del_after_key", (H1,), _h(("x-api-key", "{alpha}\x7f")), bad_request()),
    Case("crlf_injection", (H1,), _h(("x-api-key", "{alpha}\r\nx-keyward-key-id: kAdmin")), allow("alpha"),
         note="on the wire this is a second header line: a spoofed identity header, replaced"),
    Case("bare_lf_injection", (H1,), _h(("x-api-key", "{alpha}\nx-keyward-key-id: kAdmin")), allow("alpha"),
         note="Envoy ends the line at a bare LF: a spoofed identity header, replaced"),
    Case("bare_cr_injection", (H1,), _h(("x-api-key", "{alpha}\rx-keyward-key-id: kAdmin")), MALFORMED,
         note="Envoy keeps the bare CR inside the value"),
    Case("crlf_injection_h2", (H2,), _h(("x-api-key", "{alpha}\r\nx-keyward-key-id: kAdmin")), h2_close()),
    Case("lf_injection_h2", (H2,), _h(("x-api-key", "{alpha}\nx-keyward-key-id: kAdmin")), h2_close()),
    # ---- lengths
    Case("longest_ak_shape_unknown", BOTH, _h(("x-api-key", "{ak164}")), deny(401, "invalid_api_key"),
         note="the default formats end at 164 bytes, below max_credential_bytes"),
    Case("ak_secret_one_past_format_limit", BOTH, _h(("x-api-key", "{ak165}")), MALFORMED),
    Case("key_at_max_credential_bytes", BOTH, _h(("x-api-key", "{lng256}")), allow("lng256")),
    Case("unknown_key_at_max_credential_bytes", BOTH, _h(("authorization", "Bearer {lng256x}")), deny(401, "invalid_api_key")),
    Case("key_one_past_max_credential_bytes", BOTH, _h(("x-api-key", "{lng257}")), MALFORMED),
    Case("header_value_at_raw_cap", BOTH, _h(("authorization", ("Bearer", Rep(" ", 58), "{lng256}"))), allow("lng256"),
         note="320 bytes: the raw value may be max_credential_bytes + 64"),
    Case("header_value_one_past_raw_cap", BOTH, _h(("authorization", ("Bearer", Rep(" ", 59), "{lng256}"))), MALFORMED,
         note="321 bytes: refused before the scheme is parsed"),
    Case("hundred_keys_comma_separated", BOTH, _h(("authorization", ("Bearer ", Rep("{alpha}", 100, ", ")))), MALFORMED),
    Case("hundred_keys_space_separated", BOTH, _h(("x-api-key", (Rep("{alpha}", 100, " "),))), MALFORMED),
    Case("value_60k_x_api_key", BOTH, _h(("x-api-key", (Rep("a", 61440),))), MALFORMED,
         note="below Envoy's 96 KiB header limit (max_request_headers_kb: 96)"),
    Case("value_60k_bearer_then_key", BOTH, _h(("authorization", ("Bearer ", Rep("a", 61440), " {alpha}"))), MALFORMED),
    Case("value_100k", (H1,), _h(("x-api-key", (Rep("a", 102400),))), too_large()),
    Case("value_100k_h2", (H2,), _h(("x-api-key", (Rep("a", 102400),))), h2_reset("http2.header_list_size_too_large")),
    # ---- many headers (Envoy's max_headers_count: 100 by default)
    Case("headers_100", (H1,), _h(("x-api-key", "{alpha}")), allow("alpha"), pad=97),
    Case("headers_101", (H1,), _h(("x-api-key", "{alpha}")), too_large(), pad=98),
    Case("headers_200", (H1,), _h(("x-api-key", "{alpha}")), too_large(), pad=197),
    Case("headers_2000", (H1,), _h(("x-api-key", "{alpha}")), too_large(), pad=1997),
    Case("headers_100_h2", (H2,), _h(("x-api-key", "{alpha}")), allow("alpha"), pad=94, note="HTTP/2 counts the pseudo-headers"),
    Case("headers_101_h2", (H2,), _h(("x-api-key", "{alpha}")), h2_reset("http2.header_overflow"), pad=95),
    Case("headers_200_h2", (H2,), _h(("x-api-key", "{alpha}")), h2_reset("http2.header_overflow"), pad=194),
    Case("headers_2000_h2", (H2,), _h(("x-api-key", "{alpha}")), h2_reset("http2.header_overflow"), pad=1994),
    # ---- x-keyward-* spoofing
    Case("spoof_identity_allowed", BOTH, SPOOF_IDENTITY + (BEARER_ALPHA,), allow("alpha"), note="exactly the trusted values arrive"),
    Case("spoof_identity_mixed_case", (H1,), (("X-Keyward-Key-Id", "kAdmin"), ("X-KEYWARD-PROJECT", "proj_other"), BEARER_ALPHA), allow("alpha")),
    Case("spoof_identity_repeated", BOTH, (("x-keyward-key-id", "kAdmin"), ("x-keyward-key-id", "kRoot"), BEARER_ALPHA), allow("alpha")),
    Case("spoof_identity_denied", BOTH, SPOOF_IDENTITY, deny(401, "missing_api_key")),
    Case("spoof_identity_paused_key", BOTH, SPOOF_IDENTITY + (("x-api-key", "{paused}"),), deny(403, "key_paused")),
    Case("spoof_identity_exempt", BOTH, SPOOF_IDENTITY + (BEARER_ALPHA,), exempt(), path="/healthz",
         note="exempt: no identity is added, client copies are removed, the key too"),
    Case("spoof_other_keyward_headers_allowed", BOTH, SPOOF_OTHER + (BEARER_ALPHA,), allow("alpha")),
    Case("spoof_other_keyward_headers_exempt", BOTH, SPOOF_OTHER, exempt(), path="/healthz"),
    # ---- HTTP/2 only
    Case("uppercase_header_name_h2", (H2,), _h(("Authorization", "Bearer {alpha}")), h2_close()),
    Case("uppercase_spoofed_identity_h2", (H2,), _h(("x-api-key", "{alpha}"), ("X-Keyward-Key-Id", "kAdmin")), h2_close()),
    Case("connection_header_h2", (H2,), _h(("connection", "keep-alive"), BEARER_ALPHA), h2_close()),
    Case("pseudo_header_after_regular_h2", (H2,), _h(("x-api-key", "{alpha}"), (":path", "/v1/models")), h2_close()),
]

CASE_BY_ID = {c.id: c for c in CASES}
assert len(CASE_BY_ID) == len(CASES), "case ids must be unique"


# --------------------------------------------------------------------------------------------
# the table


def _sent(case: Case, version: str) -> str:
    lines = [f"`{name}:{' ' if render_value(value) else ''}{render_value(value)}`" for name, value in case.headers]
    if not lines:
        lines.append("(nothing else)")
    if case.pad:
        lines.append(f"+ {case.pad} × `x-pad-<i>: v`")
    if case.pad:
        unit = "header lines" if version == H1 else "header fields with pseudo-headers"
        lines.append(f"({case.fields(version)} {unit})")
    if case.path != "/v1/models":
        lines.insert(0, f"path `{case.path}`")
    return "<br>".join(lines)


def _status(e: Expect) -> str:
    if e.outcome in ("allow", "exempt"):
        return "200 from upstream"
    if e.outcome in ("deny", "envoy_reply"):
        return str(e.status)
    return "no response"


def _code(e: Expect) -> str:
    if e.outcome == "allow":
        return f"none: allowed as `{{{e.key}}}`"
    if e.outcome == "exempt":
        return "none: exempt route"
    if e.outcome == "deny":
        return f"`{e.code}`"
    if e.outcome == "envoy_reply":
        return f"Envoy rejects before the filter: {e.status} `{e.body}` (`{e.stat}`)"
    if e.outcome == "envoy_close":
        return f"Envoy rejects before the filter: closes the connection, no response (`{e.stat}`)"
    return f"Envoy rejects before the filter: RST_STREAM {e.reset} (`{e.stat}`)"


def _must_not(e: Expect) -> str:
    if e.outcome == "allow":
        return "a credential, or a client-sent `x-keyward-*` value, reaches the upstream"
    if e.outcome == "exempt":
        return "a credential, or any `x-keyward-*` header, reaches the upstream"
    if e.outcome == "deny":
        return "the request reaches the upstream; the reply contains a key"
    return "the filter runs; the request reaches the upstream; the reply contains a key"


def _note(case: Case) -> str:
    parts = []
    if case.note:
        parts.append(case.note.replace("|", "\\|"))
    return " ".join(parts)


TABLE_HEAD = [
    "| id | HTTP | headers sent (after `host` or the pseudo-headers, and `x-request-id`) | status | `x-keyward-error` | must not happen | note |",
    "|---|---|---|---|---|---|---|",
]


def render_table() -> str:
    rows = list(TABLE_HEAD)
    for case in CASES:
        version = "1.1, 2" if case.http == BOTH else case.http[0]
        rows.append(
            f"| `{case.id}` | {version} | {_sent(case, case.http[-1])} | {_status(case.expect)} | "
            f"{_code(case.expect)} | {_must_not(case.expect)} | {_note(case)} |"
        )
    return "\n".join(rows)


def render_legend() -> str:
    lines = ["| placeholder | key |", "|---|---|"]
    for name, ref in KEYS.items():
        lines.append(f"| `{{{name}}}` | {ref.meaning} |")
    return "\n".join(lines)


BEGIN = "<!-- generated by scripts/bad_inputs_doc.py from integration/bad_inputs.py: begin -->"
END = "<!-- generated: end -->"


def render_generated() -> str:
    return f"{BEGIN}\n\n{render_legend()}\n\n{render_table()}\n\n{END}"


def replace_generated(doc: str) -> str:
    """`doc` with the text between the markers replaced by `render_generated()`."""
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    return doc[:start] + render_generated() + doc[end:]
