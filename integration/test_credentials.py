"""Credential extraction and key-format checks: every bad input is 401 malformed_api_key."""

import base64
import json

import pytest

from checks import assert_denied, bearer, xkey
from keys import rand_base62
from world import WORLD

W = WORLD
A = W.alpha  # a valid, active key: any rejection below is due to the shape of the request


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = ".".join(
    [
        _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        _b64url(json.dumps({"sub": "user-1", "iat": 1795000000}).encode()),
        _b64url(bytes(range(32))),
    ]
)

MALFORMED = [
    # (id, headers)
    ("wrong_prefix", [bearer(f"ab_{A.id}.{A.secret}")]),
    ("other_vendor_key", [bearer("sk-proj-" + rand_base62(48))]),
    ("other_vendor_key_x_api_key", [xkey("sk-ant-api03-" + rand_base62(40))]),
    ("jwt", [bearer(JWT)]),
    ("secret_bad_charset", [bearer(f"ak_{A.id}.{A.secret[:-2]}-_")]),
    ("key_id_bad_charset", [bearer(f"ak_ab-cd.{A.secret}")]),
    ("key_id_too_short", [bearer(f"ak_abc.{A.secret}")]),
    ("key_id_too_long", [bearer(f"ak_{'k' * 33}.{A.secret}")]),
    ("secret_too_short", [bearer(f"ak_{A.id}.{rand_base62(15)}")]),
    ("secret_too_long", [bearer(f"ak_{A.id}.{rand_base62(129)}")]),
    ("missing_separator", [bearer(f"ak_{A.id}{A.secret}")]),
    ("empty_secret", [bearer(f"ak_{A.id}.")]),
    ("empty_key_id", [bearer(f"ak_.{A.secret}")]),
    ("prefix_only", [bearer("ak_")]),
    ("vpx_body_too_short", [xkey("vpx_live_" + rand_base62(23))]),
    ("vpx_body_too_long", [xkey("vpx_live_" + rand_base62(65))]),
    ("vpx_unknown_environment", [xkey("vpx_prod_" + rand_base62(32))]),
    ("vpx_missing_environment_separator", [xkey("vpx_live" + rand_base62(32))]),
    ("vpx_bad_charset", [xkey("vpx_live_" + rand_base62(30) + "+/")]),
    ("empty_bearer", [("authorization", "Bearer")]),
    ("empty_bearer_trailing_space", [("authorization", "Bearer ")]),
    ("basic_scheme", [("authorization", "Basic dXNlcjpwYXNzd29yZA==")]),
    ("token_scheme", [("authorization", f"Token {A.plaintext}")]),
    ("no_scheme", [("authorization", A.plaintext)]),
    ("bearer_without_space", [("authorization", f"Bearer{A.plaintext}")]),
    ("space_inside_key", [bearer(f"ak_{A.id}. {A.secret}")]),
    ("two_tokens", [bearer(f"{A.plaintext} {A.plaintext}")]),
    ("header_over_max_bytes_authorization", [bearer(f"ak_{A.id}." + rand_base62(300))]),
    ("header_over_max_bytes_x_api_key", [xkey(f"ak_{A.id}." + rand_base62(300))]),
    ("header_64k_authorization", [("authorization", "Bearer " + "a" * (64 * 1024))]),
    ("header_64k_x_api_key", [xkey("a" * (64 * 1024))]),
    ("two_authorization_headers_same_key", [bearer(A), bearer(A)]),
    ("two_authorization_headers_different_keys", [bearer(A), bearer(W.alpha_vpx)]),
    ("two_x_api_key_headers_different_keys", [xkey(A), xkey(W.alpha_vpx)]),
    ("authorization_and_x_api_key_differ", [bearer(A), xkey(W.alpha_vpx)]),
    ("authorization_and_x_api_key_differ_same_project", [bearer(A), xkey(W.future)]),
    ("malformed_authorization_valid_x_api_key", [("authorization", "Basic dXNlcjpwYXNz"), xkey(A)]),
    ("non_ascii_in_secret", [("x-api-key", f"ak_{A.id}.".encode() + A.secret[:-1].encode() + b"\xc3\xa9")]),
    ("non_ascii_in_bearer", [("authorization", b"Bearer ak_" + A.id.encode() + b".\xe2\x82\xac" + A.secret.encode())]),
    ("latin1_byte", [("x-api-key", A.plaintext.encode() + b"\xff")]),
]


@pytest.mark.parametrize("headers", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed(main_envoy, headers):
    resp = main_envoy.request("GET", "/v1/models", headers)
    presented = tuple(v for _k, v in headers if isinstance(v, str) and len(v) > 12)
    assert_denied(main_envoy, resp, 401, "malformed_api_key", presented=presented)


def test_malformed_is_not_an_oracle(main_envoy):
    """A malformed key that embeds a real key id gets the same answer as one with a fake id."""
    a = main_envoy.request("GET", "/v1/models", [bearer(f"ak_{A.id}.short")])
    b = main_envoy.request("GET", "/v1/models", [bearer("ak_zzzzzzzz.short")])
    ja = assert_denied(main_envoy, a, 401, "malformed_api_key")
    jb = assert_denied(main_envoy, b, 401, "malformed_api_key")
    ja["error"].pop("request_id")
    jb["error"].pop("request_id")
    assert ja == jb


def test_empty_x_api_key_is_missing_or_malformed(main_envoy):
    # an empty header value: no credential at all (Envoy may even drop it)
    resp = main_envoy.request("GET", "/v1/models", [("x-api-key", "")])
    assert resp.status == 401, resp
    assert resp.header("x-keyward-error") in ("missing_api_key", "malformed_api_key"), resp
    assert main_envoy.upstream.by_request_id(resp.request_id) == []
