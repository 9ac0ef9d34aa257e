# SPDX-License-Identifier: MIT
"""Authentication end to end (docs/reference.md "Authentication", auth.md): routes
with `auth` admit a request only with a credential their provider accepts.

Tokens come from an independent implementation: PyJWT and pyca/cryptography (Debian
python3-jwt, python3-cryptography) make fresh keys at test time, the JWKS file is
written from those keys, and tokens are signed with them. Covered: RS256, ES256,
EdDSA and HS256 tokens pass; 401 with WWW-Authenticate for missing, malformed,
tampered, expired, misaddressed, unsecured and key-confused tokens; 403 for unmet
require_claims; forwarded claims and forged claim headers; the credential removed
from header, cookie and query (kept with forward_credential); API keys; rate-limit
and hash keys by claim; the rejection metric; the access log's subject; reloads
that rotate or break the key files; key files that stop a start and `-t`."""
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import time

import pytest

from tp_harness import (BIN, T, assert_gateway_error, build_request, build_response, get, reserve_port,
                        upstream_cfg, wait_until)
from tp_more import generation, metrics, reload, write_text_atomic

jwt = pytest.importorskip("jwt")
pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402

ISS = "https://id.example.test"
AUD = "orders-api"
# kid -> the algorithm its tokens are signed with
ALG = {"rsa": "RS256", "rsa2": "RS256", "ec": "ES256", "ed": "EdDSA", "hmac": "HS256"}
CLAIM_HEADERS = {"sub": "x-user-id", "tenant": "x-tenant-id"}


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_dec(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "hmac": os.urandom(64),
    }


def jwk(keys, kid):
    """The public JWK of keys[kid] (the secret itself for the HMAC key)."""
    k = keys[kid]
    if isinstance(k, bytes):
        return {"kty": "oct", "kid": kid, "k": b64u(k), "use": "sig"}
    conv = {"RS": RSAAlgorithm, "ES": ECAlgorithm, "Ed": OKPAlgorithm}[ALG[kid][:2]]
    j = json.loads(conv.to_jwk(k.public_key()))
    if j["kty"] == "EC":
        # coordinates at the full field size (PyJWT may drop a leading zero byte)
        nums = k.public_key().public_numbers()
        j["x"], j["y"] = b64u(nums.x.to_bytes(32, "big")), b64u(nums.y.to_bytes(32, "big"))
    j.update(kid=kid, use="sig")
    return j


def write_jwks(path, keys, kids):
    write_text_atomic(path, json.dumps({"keys": [jwk(keys, kid) for kid in kids]}))


def claims(**over):
    """Good claims for the default provider; a value of None drops the claim."""
    now = int(time.time())
    c = {"sub": "user-1", "tenant": "acme", "scope": "orders:read", "iss": ISS, "aud": AUD,
         "iat": now, "nbf": now, "exp": now + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def token(keys, kid="rsa", header=None, **over):
    hdr = {"kid": kid}
    hdr.update(header or {})
    return jwt.encode(claims(**over), keys[kid], algorithm=ALG[kid], headers=hdr)


def bearer(tok):
    return [("Authorization", f"Bearer {tok}")]


def provider(jwks_path, **extra):
    j = {"keys": str(jwks_path), "issuer": ISS, "audiences": [AUD], "forward_claims": dict(CLAIM_HEADERS)}
    j.update(extra)
    return {"name": "tenants", "jwt": j}


def route(name="orders", prefix=None, provider_name="tenants", **auth):
    a = {"provider": provider_name}
    a.update(auth)
    return {"name": name, "match": {"path_prefix": prefix or f"/{name}"}, "upstream": "u", "auth": a}


def start(h, keys, kids=("rsa", "ec", "ed", "hmac"), jwt_extra=None, routes=None, extra_auth=(), **top):
    """An upstream and a turnpike with the JWT provider "tenants" (JWKS of kids),
    route "orders" (/orders) behind it and route "open" (/open) without auth.
    Returns (upstream, turnpike, JWKS path)."""
    path = h.tmp_path / "jwks.json"
    write_jwks(path, keys, kids)
    up = h.upstream(name="U")
    cfg = {"auth": [provider(path, **(jwt_extra or {}))] + list(extra_auth),
           "upstreams": [upstream_cfg("u", up)],
           "routes": (routes or [route()]) + [{"name": "open", "match": {"path_prefix": "/open"}, "upstream": "u"}]}
    cfg.update(top)
    return up, h.turnpike(cfg), path


def through(up, port, target="/orders/1", headers=None):
    """One request that must reach the upstream: returns (response, the head the upstream saw)."""
    n = len(up.heads)
    r = get(port, target, headers=headers)
    assert r.status == 200, r
    assert len(up.heads) == n + 1, (n, up.heads)
    return r, up.heads[-1]


def refused(up, port, status, target="/orders/1", headers=None):
    """One request the gateway must answer itself: returns (response, its JSON body)."""
    n = len(up.heads)
    r = get(port, target, headers=headers)
    j = assert_gateway_error(r, status)
    assert len(up.heads) == n, f"a refused request reached the upstream: {up.heads[n:]}"
    return r, j


def check_missing(r, j, jwt_provider=True):
    assert j["error"] == "missing credential", j
    if jwt_provider:
        www = r.header("www-authenticate")
        assert www is not None and www.split()[0] == "Bearer" and "error=" not in www, r


def check_invalid(r, j, error="invalid credential"):
    assert j["error"] == error, j
    www = r.header("www-authenticate")
    assert www is not None and www.split()[0] == "Bearer", r
    assert 'error="invalid_token"' in www, r


def claim_headers_seen(req):
    return {name: req.header(name) for name in CLAIM_HEADERS.values()}


# --------------------------------------------------------------------------
# JWT: what passes, what is forwarded
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["rsa", "ec", "ed", "hmac"])
def test_valid_token_passes_with_claims_and_without_credential(h, keys, kid):
    up, tp, _ = start(h, keys)
    tok = token(keys, kid, sub=f"user-{kid}", tenant=f"tenant-{kid}")
    assert jwt.get_unverified_header(tok)["alg"] == ALG[kid]
    for i in range(4):  # fresh connections: both workers, first verification and cached
        r, req = through(up, tp.port, f"/orders/{i}", bearer(tok))
        assert r.body == f"GET /orders/{i}".encode(), r
        assert claim_headers_seen(req) == {"x-user-id": f"user-{kid}", "x-tenant-id": f"tenant-{kid}"}, req.headers
        assert not req.headers.has("authorization"), req.headers
        assert tok.encode() not in req.raw_head, req.raw_head


def test_bearer_scheme_is_case_insensitive(h, keys):
    """RFC 7235 2.1: the auth-scheme is a case-insensitive token."""
    up, tp, _ = start(h, keys)
    tok = token(keys)
    for scheme in ("bearer", "BEARER"):
        _, req = through(up, tp.port, headers=[("Authorization", f"{scheme} {tok}")])
        assert req.header("x-user-id") == "user-1" and not req.headers.has("authorization"), req.headers


def test_routes_without_auth_are_untouched(h, keys):
    up, tp, _ = start(h, keys)
    tok = token(keys)
    _, req = through(up, tp.port, "/open/x", bearer(tok) + [("X-User-Id", "client-said")])
    assert req.header("authorization") == f"Bearer {tok}", req.headers
    assert req.header("x-user-id") == "client-said", req.headers


def test_missing_credential(h, keys):
    up, tp, _ = start(h, keys)
    for hdrs in ([], [("Authorization", "Basic dXNlcjpwYXNz")], [("Cookie", f"session={token(keys)}")]):
        r, j = refused(up, tp.port, 401, headers=hdrs)
        check_missing(r, j)


BAD = {
    "garbage": lambda keys: "not-a-token",
    "three garbage parts": lambda keys: "abc.def.ghi",
    "padded": lambda keys: token(keys) + "==",
    "payload changed": lambda keys: tamper_payload(token(keys)),
    "signature changed": lambda keys: tamper_signature(token(keys)),
    "wrong issuer": lambda keys: token(keys, iss="https://evil.example"),
    "wrong audience": lambda keys: token(keys, aud="billing-api"),
    "no exp": lambda keys: token(keys, exp=None),
    "nbf ahead": lambda keys: token(keys, nbf=int(time.time()) + 600),
    "iat ahead": lambda keys: token(keys, iat=int(time.time()) + 600),
    "unknown kid": lambda keys: jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "gone"}),
    "key of another type": lambda keys: jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "ec"}),
    "signed by a key not in the set": lambda keys: jwt.encode(claims(), keys["rsa2"], algorithm="RS256",
                                                              headers={"kid": "rsa"}),
    "alg none": lambda keys: jwt.encode(claims(), None, algorithm="none"),
    "alg none with kid and signature": lambda keys: unsecured(claims(), {"alg": "none", "kid": "rsa"}, "c2ln"),
    "HS256 keyed with the RSA public key": lambda keys: confused(keys, {"alg": "HS256", "kid": "rsa", "typ": "JWT"}),
    "HS256 keyed with the RSA public key, no kid": lambda keys: confused(keys, {"alg": "HS256"}),
}


def tamper_payload(tok):
    h, p, s = tok.split(".")
    body = json.loads(b64u_dec(p))
    body["sub"] = "admin"
    return ".".join([h, b64u(json.dumps(body).encode()), s])


def tamper_signature(tok):
    h, p, s = tok.split(".")
    sig = bytearray(b64u_dec(s))
    sig[len(sig) // 2] ^= 0x10
    return ".".join([h, p, b64u(bytes(sig))])


def unsecured(body, header, sig=""):
    return f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(body).encode())}.{sig}"


def confused(keys, header):
    """The RS256 -> HS256 confusion: an HMAC whose secret is the RSA public key (PEM)."""
    pem = keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims()).encode())}"
    return signing_input + "." + b64u(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())


@pytest.mark.parametrize("case", list(BAD))
def test_bad_token_is_refused(h, keys, case):
    up, tp, _ = start(h, keys)
    tok = BAD[case](keys)
    r, j = refused(up, tp.port, 401, headers=bearer(tok))
    check_invalid(r, j)
    # the same request with a good token passes: the refusal was about the token
    through(up, tp.port, headers=bearer(token(keys)))
    m = metrics(tp)
    assert m.value("turnpike_auth_rejected_total", route="orders", reason="invalid") == 1, m.grep("auth_rejected")


def test_expired_token_and_clock_skew(h, keys):
    up, tp, _ = start(h, keys)
    now = int(time.time())
    old = dict(iat=now - 1200, nbf=now - 1200)
    r, j = refused(up, tp.port, 401, headers=bearer(token(keys, exp=now - 120, **old)))
    check_invalid(r, j, "expired credential")
    # past exp by less than the default skew of 30s: still good
    through(up, tp.port, headers=bearer(token(keys, exp=now - 5, **old)))
    # issued or valid from a little in the future: within the skew too
    through(up, tp.port, headers=bearer(token(keys, nbf=now + 10, iat=now + 10)))
    m = metrics(tp)
    assert m.value("turnpike_auth_rejected_total", route="orders", reason="expired") == 1, m.grep("auth_rejected")


def test_clock_skew_zero(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"clock_skew": "0s"})
    now = int(time.time())
    r, j = refused(up, tp.port, 401, headers=bearer(token(keys, exp=now - 5, iat=now - 600, nbf=now - 600)))
    check_invalid(r, j, "expired credential")
    r, j = refused(up, tp.port, 401, headers=bearer(token(keys, nbf=now + 20)))
    check_invalid(r, j)
    through(up, tp.port, headers=bearer(token(keys)))


def test_issuer_and_audience_not_checked_when_not_configured(h, keys):
    path = h.tmp_path / "jwks.json"
    write_jwks(path, keys, ["rsa"])
    up = h.upstream(name="U")
    tp = h.turnpike({"auth": [{"name": "tenants", "jwt": {"keys": str(path)}}],
                     "upstreams": [upstream_cfg("u", up)], "routes": [route()]})
    _, req = through(up, tp.port, headers=bearer(token(keys, iss="https://anyone.example", aud=["x", "y"])))
    assert not req.headers.has("authorization") and not req.headers.has("x-user-id"), req.headers
    _, req = through(up, tp.port, headers=bearer(token(keys, iss=None, aud=None)))
    r, j = refused(up, tp.port, 401, headers=bearer(token(keys, exp=None)))
    check_invalid(r, j)


def test_audience_array_and_several_audiences(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"audiences": [AUD, "admin-api"]})
    through(up, tp.port, headers=bearer(token(keys, aud=["billing-api", AUD])))
    through(up, tp.port, headers=bearer(token(keys, aud="admin-api")))
    r, j = refused(up, tp.port, 401, headers=bearer(token(keys, aud=["billing-api", "other"])))
    check_invalid(r, j)


# --------------------------------------------------------------------------
# require_claims
# --------------------------------------------------------------------------


def test_require_claims_scope_and_arrays(h, keys):
    up, tp, _ = start(h, keys, routes=[
        route("orders", require_claims={"scope": "orders:read"}),
        route("admin", require_claims={"roles": "admin", "tenant": "acme"}),
    ])
    for scope in ("orders:read", "profile orders:read", "orders:write orders:read email"):
        _, req = through(up, tp.port, headers=bearer(token(keys, scope=scope)))
        assert req.header("x-user-id") == "user-1"
    for scope in ("orders:write", "orders:readonly", "orders:read:all", "xorders:read", None):
        r, j = refused(up, tp.port, 403, headers=bearer(token(keys, scope=scope)))
        assert j["error"] == "insufficient claims", j
        assert not r.headers.has("www-authenticate") or "invalid_token" not in r.header("www-authenticate"), r
    for roles in (["user", "admin"], ["admin"], "admin"):
        through(up, tp.port, "/admin/x", bearer(token(keys, roles=roles)))
    for roles, tenant in ((["user"], "acme"), ("administrator", "acme"), (["user", "admins"], "acme"),
                          (["admin"], "globex"), (None, "acme"), (["admin"], None)):
        _, j = refused(up, tp.port, 403, "/admin/x", bearer(token(keys, roles=roles, tenant=tenant)))
        assert j["error"] == "insufficient claims", j
    # a bad token on a route with require_claims is a 401, not a 403
    r, j = refused(up, tp.port, 401, "/admin/x", bearer(tamper_payload(token(keys, roles=["admin"]))))
    check_invalid(r, j)


# --------------------------------------------------------------------------
# forward_claims and forged headers
# --------------------------------------------------------------------------


def test_client_claim_headers_are_replaced(h, keys):
    up, tp, _ = start(h, keys)
    forged = [("X-User-Id", "admin"), ("x-user-id", "root"), ("X-TENANT-ID", "evil")]
    _, req = through(up, tp.port, headers=forged + bearer(token(keys, sub="alice", tenant="acme")))
    assert req.headers.all("x-user-id") == ["alice"], req.headers
    assert req.headers.all("x-tenant-id") == ["acme"], req.headers
    # a token without the claim: the client's header is removed, nothing is set
    _, req = through(up, tp.port, headers=forged + bearer(token(keys, sub="bob", tenant=None)))
    assert req.headers.all("x-user-id") == ["bob"], req.headers
    assert not req.headers.has("x-tenant-id"), req.headers
    assert b"evil" not in req.raw_head and b"root" not in req.raw_head, req.raw_head


@pytest.mark.parametrize("value", [42, True, {"id": "acme"}, ["acme"], None])
def test_claims_that_are_not_strings_are_not_forwarded(h, keys, value):
    up, tp, _ = start(h, keys)
    _, req = through(up, tp.port, headers=[("X-Tenant-Id", "forged")] + bearer(token(keys, tenant=value)))
    assert not req.headers.has("x-tenant-id"), req.headers
    assert req.header("x-user-id") == "user-1", req.headers


# --------------------------------------------------------------------------
# where the token comes from, and what is removed
# --------------------------------------------------------------------------

ALL_SOURCES = ["header:authorization", "cookie:session", "query:access_token"]


def cookies_of(req):
    """The cookies the upstream got, as a list of "name=value" in order."""
    out = []
    for v in req.headers.all("cookie"):
        out += [c.strip() for c in v.split(";") if c.strip()]
    return out


def test_token_in_cookie(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"from": ["cookie:session"]})
    tok = token(keys, sub="cookie-user")
    _, req = through(up, tp.port, headers=[("Cookie", f"theme=dark; session={tok}; lang=en")])
    assert req.header("x-user-id") == "cookie-user", req.headers
    assert cookies_of(req) == ["theme=dark", "lang=en"], req.headers
    assert tok.encode() not in req.raw_head, req.raw_head
    # the token was the only cookie
    _, req = through(up, tp.port, headers=[("Cookie", f"session={tok}")])
    assert cookies_of(req) == [] and tok.encode() not in req.raw_head, req.raw_head
    # a provider reading cookies ignores Authorization
    r, j = refused(up, tp.port, 401, headers=bearer(tok))
    check_missing(r, j)
    r, j = refused(up, tp.port, 401, headers=[("Cookie", "theme=dark; session=nope")])
    check_invalid(r, j)


def test_token_in_query(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"from": ["query:access_token"]})
    tok = token(keys, sub="query-user")
    _, req = through(up, tp.port, f"/orders/list?a=1&access_token={tok}&b=2")
    assert req.target == "/orders/list?a=1&b=2", req
    assert req.header("x-user-id") == "query-user", req.headers
    _, req = through(up, tp.port, f"/orders/list?b=2&access_token={tok}")
    assert req.target == "/orders/list?b=2", req
    _, req = through(up, tp.port, f"/orders/list?access_token={tok}")
    assert req.target in ("/orders/list", "/orders/list?"), req
    assert tok.encode() not in req.raw_head, req.raw_head
    # a parameter whose name only ends in the configured name is not the token
    r, j = refused(up, tp.port, 401, f"/orders/list?my_access_token={tok}")
    check_missing(r, j)
    r, j = refused(up, tp.port, 401, "/orders/list", bearer(tok))
    check_missing(r, j)


def test_sources_in_order(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"from": ALL_SOURCES})
    good = token(keys, sub="from-cookie")
    _, req = through(up, tp.port, headers=[("Cookie", f"session={good}")])
    assert req.header("x-user-id") == "from-cookie" and cookies_of(req) == [], req.headers
    _, req = through(up, tp.port, f"/orders/q?access_token={token(keys, sub='from-query')}")
    assert (req.header("x-user-id"), req.target) == ("from-query", "/orders/q"), req
    # the header comes first: its token decides, even when the cookie's is good
    r, j = refused(up, tp.port, 401, headers=bearer(tamper_signature(good)) + [("Cookie", f"session={good}")])
    check_invalid(r, j)
    _, req = through(up, tp.port, headers=bearer(token(keys, sub="from-header")) + [("Cookie", "a=1")])
    assert req.header("x-user-id") == "from-header" and not req.headers.has("authorization"), req.headers
    assert cookies_of(req) == ["a=1"], req.headers


def test_token_in_named_header(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"from": ["header:x-token"]})
    tok = token(keys, sub="hdr-user")
    _, req = through(up, tp.port, headers=[("X-Token", tok), ("X-Other", "stays")])
    assert req.header("x-user-id") == "hdr-user" and req.header("x-other") == "stays", req.headers
    assert not req.headers.has("x-token") and tok.encode() not in req.raw_head, req.raw_head
    r, j = refused(up, tp.port, 401, headers=[("X-Token", f"Bearer {tok}")])  # the whole value is the token
    check_invalid(r, j)


def test_repeated_credential_is_removed_everywhere(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"from": ["cookie:session", "query:access_token"]})
    tok = token(keys)
    _, req = through(up, tp.port, f"/orders/x?access_token={tok}&access_token=second&z=1")
    assert req.target == "/orders/x?z=1", req
    _, req = through(up, tp.port, headers=[("Cookie", "a=1"), ("Cookie", f"session={tok}; b=2; session=second")])
    assert cookies_of(req) == ["a=1", "b=2"], req.headers


def test_forward_credential_keeps_it(h, keys):
    up, tp, _ = start(h, keys, jwt_extra={"from": ALL_SOURCES},
                      routes=[route("orders", forward_credential=True)])
    tok = token(keys, sub="kept")
    _, req = through(up, tp.port, headers=bearer(tok) + [("X-User-Id", "forged")])
    assert req.header("authorization") == f"Bearer {tok}", req.headers
    assert req.headers.all("x-user-id") == ["kept"], req.headers  # forgery is still removed
    _, req = through(up, tp.port, headers=[("Cookie", f"a=1; session={tok}")])
    assert cookies_of(req) == ["a=1", f"session={tok}"], req.headers
    _, req = through(up, tp.port, f"/orders/q?x=1&access_token={tok}")
    assert req.target == f"/orders/q?x=1&access_token={tok}", req


def test_no_claims_carry_over_on_a_connection(h, keys):
    """Keep-alive and pipelined requests are each judged on their own credential."""
    up, tp, _ = start(h, keys)
    c = h.client(tp.port)
    c.request("GET", "/orders/1", bearer(token(keys, sub="first", tenant="t1")))
    assert c.read_response().status == 200
    c.request("GET", "/orders/2", [("X-User-Id", "forged")])
    r = c.read_response()
    check_missing(r, assert_gateway_error(r, 401))
    c.request("GET", "/orders/3", bearer(token(keys, sub="second", tenant=None)))
    assert c.read_response().status == 200
    assert claim_headers_seen(up.heads[-1]) == {"x-user-id": "second", "x-tenant-id": None}, up.heads[-1].headers
    c.send(build_request("GET", "/orders/4", bearer(token(keys, sub="p1"))) + build_request("GET", "/orders/5")
           + build_request("GET", "/orders/6", bearer(token(keys, sub="p3", tenant=None))))
    assert [c.read_response().status for _ in range(3)] == [200, 401, 200]
    assert [claim_headers_seen(q) for q in up.heads[-2:]] == [{"x-user-id": "p1", "x-tenant-id": "acme"},
                                                              {"x-user-id": "p3", "x-tenant-id": None}]
    assert [q.target for q in up.heads] == ["/orders/1", "/orders/3", "/orders/4", "/orders/6"]


def test_upgrade_request_needs_the_credential(h, keys):
    def switch(req, conn):
        return build_response(101, b"", [("Upgrade", "websocket"), ("Connection", "Upgrade")], length=False)

    up = h.upstream(switch, name="U")
    path = h.tmp_path / "jwks.json"
    write_jwks(path, keys, ["rsa"])
    tp = h.turnpike({"auth": [provider(path)], "upstreams": [upstream_cfg("u", up)], "routes": [route()]})
    ws = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
          ("Sec-WebSocket-Version", "13")]
    r, j = refused(up, tp.port, 401, "/orders/ws", ws)
    check_missing(r, j)
    tok = token(keys, sub="ws-user")
    c = h.client(tp.port)
    c.request("GET", "/orders/ws", ws + bearer(tok) + [("X-User-Id", "forged")])
    assert c.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 101 "), "no 101"
    up.wait_heads(1)
    req = up.heads[0]
    assert req.headers.all("x-user-id") == ["ws-user"] and not req.headers.has("authorization"), req.headers
    assert tok.encode() not in req.raw_head, req.raw_head


# --------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------

API_KEYS = {  # name: (secret, tenant)
    "alpha": ("ak-alpha-" + "1" * 24, "acme"),
    "beta": ("ak-beta-" + "2" * 24, "globex"),
    "gamma": ("ak-gamma-" + "3" * 24, "acme"),
    "delta": ("ak-delta-" + "4" * 24, None),
}


def write_api_keys(path, names):
    lines = []
    for name in names:
        secret, tenant = API_KEYS[name]
        lines.append(f"- name: {name}\n  sha256: {hashlib.sha256(secret.encode()).hexdigest()}\n")
        if tenant:
            lines.append(f"  tenant: {tenant}\n")
    write_text_atomic(path, "".join(lines))


def start_api(h, routes, header=None, names=tuple(API_KEYS), **top):
    path = h.tmp_path / "api-keys.yaml"
    write_api_keys(path, names)
    up = h.upstream(name="U")
    ak = {"keys": str(path)}
    if header:
        ak["header"] = header
    cfg = {"auth": [{"name": "partners", "api_key": ak}], "upstreams": [upstream_cfg("u", up)], "routes": routes}
    cfg.update(top)
    return up, h.turnpike(cfg), path


def key_hdr(name, header="X-Api-Key"):
    return [(header, API_KEYS[name][0])]


def test_api_keys(h):
    up, tp, _ = start_api(h, [route("partners", provider_name="partners"),
                              route("acme", provider_name="partners", require_claims={"tenant": "acme"})])
    for name in API_KEYS:
        _, req = through(up, tp.port, "/partners/x", key_hdr(name))
        assert not req.headers.has("x-api-key"), req.headers
        assert API_KEYS[name][0].encode() not in req.raw_head, req.raw_head
    for hdrs in ([], [("X-Api-Key", "")], [("Authorization", f"Bearer {API_KEYS['alpha'][0]}")]):
        _, j = refused(up, tp.port, 401, "/partners/x", hdrs)
        assert j["error"] == "missing credential", j
    for wrong in ("nope", API_KEYS["alpha"][0][:-1], API_KEYS["alpha"][0].upper(), API_KEYS["alpha"][0] + " x"):
        _, j = refused(up, tp.port, 401, "/partners/x", [("X-Api-Key", wrong)])
        assert j["error"] == "invalid credential", j
    # the key's tenant is a claim
    through(up, tp.port, "/acme/x", key_hdr("alpha"))
    through(up, tp.port, "/acme/x", key_hdr("gamma"))
    for name in ("beta", "delta"):
        _, j = refused(up, tp.port, 403, "/acme/x", key_hdr(name))
        assert j["error"] == "insufficient claims", j
    m = metrics(tp)
    assert m.value("turnpike_auth_rejected_total", route="partners", reason="missing") == 3, m.grep("auth_rejected")
    assert m.value("turnpike_auth_rejected_total", route="partners", reason="invalid") == 4, m.grep("auth_rejected")
    assert m.value("turnpike_auth_rejected_total", route="acme", reason="forbidden") == 2, m.grep("auth_rejected")


def test_api_key_custom_header(h):
    up, tp, _ = start_api(h, [route("partners", provider_name="partners")], header="x-partner-key")
    _, req = through(up, tp.port, "/partners/x", key_hdr("beta", "X-Partner-Key") + key_hdr("alpha"))
    assert not req.headers.has("x-partner-key"), req.headers
    # the default header name is not looked at, and not removed, by this provider
    assert req.header("x-api-key") == API_KEYS["alpha"][0], req.headers
    refused(up, tp.port, 401, "/partners/x", key_hdr("alpha"))


def test_api_key_forward_credential(h):
    up, tp, _ = start_api(h, [route("partners", provider_name="partners", forward_credential=True)])
    _, req = through(up, tp.port, "/partners/x", key_hdr("alpha"))
    assert req.header("x-api-key") == API_KEYS["alpha"][0], req.headers


# --------------------------------------------------------------------------
# claims as keys
# --------------------------------------------------------------------------


def test_rate_limit_per_tenant(h, keys):
    """rate 1/h, burst 2: each tenant has exactly two requests, whatever the timing."""
    limited = route("orders")
    limited["rate_limit"] = {"rate": "1/h", "burst": 2, "key": "claim:tenant"}
    up, tp, _ = start(h, keys, routes=[limited])

    def send(tenant, sub):
        return get(tp.port, "/orders/x", headers=bearer(token(keys, sub=sub, tenant=tenant)))

    for i in range(2):
        assert send("acme", f"a{i}").status == 200
    r = send("acme", "a9")
    assert_gateway_error(r, 429)
    assert r.header("ratelimit-remaining") == "0", r
    # another tenant has its own bucket, even with the same sub
    for i in range(2):
        assert send("globex", f"a{i}").status == 200
    assert_gateway_error(send("globex", "a0"), 429)
    # tokens without the claim share one bucket, whoever they name
    assert send(None, "n1").status == 200
    assert send(None, "n2").status == 200
    assert_gateway_error(send(None, "n3"), 429)
    assert send("initech", "a0").status == 200
    # refused credentials are answered before the limit and take nothing from it
    for _ in range(3):
        refused(up, tp.port, 401)
    assert send("initech", "a1").status == 200
    assert up.count() == 8
    m = metrics(tp)
    assert m.value("turnpike_ratelimit_rejected_total", route="orders") == 3, m.grep("ratelimit_rejected")


def test_rate_limit_per_api_key_tenant(h):
    limited = route("partners", provider_name="partners")
    limited["rate_limit"] = {"rate": "1/h", "burst": 1, "key": "claim:tenant"}
    up, tp, _ = start_api(h, [limited])
    assert get(tp.port, "/partners/1", headers=key_hdr("alpha")).status == 200
    assert_gateway_error(get(tp.port, "/partners/2", headers=key_hdr("gamma")), 429)  # also acme
    assert get(tp.port, "/partners/3", headers=key_hdr("beta")).status == 200
    assert get(tp.port, "/partners/4", headers=key_hdr("delta")).status == 200  # no tenant: the shared bucket
    assert_gateway_error(get(tp.port, "/partners/5", headers=key_hdr("delta")), 429)
    assert up.count() == 3


def test_hash_key_claim_pins_tenant(h, keys):
    path = h.tmp_path / "jwks.json"
    write_jwks(path, keys, ["rsa"])
    a, b = h.upstream(name="A"), h.upstream(name="B")
    tp = h.turnpike({"auth": [provider(path)],
                     "upstreams": [upstream_cfg("u", a, b, balance="hash", hash_key="claim:tenant")],
                     "routes": [route()]})
    where = {}
    for t in range(16):
        seen = set()
        for i in range(3):  # fresh connections, so both workers choose
            r = get(tp.port, "/orders/x", headers=bearer(token(keys, sub=f"s{i}", tenant=f"tenant-{t}")))
            assert r.status == 200, r
            seen.add(r.header("x-upstream"))
        assert len(seen) == 1, (t, seen)
        where[t] = seen.pop()
    assert set(where.values()) == {"A", "B"}, where


# --------------------------------------------------------------------------
# metrics and access log
# --------------------------------------------------------------------------


def test_rejection_metric_by_reason(h, keys):
    up, tp, _ = start(h, keys, routes=[route("orders", require_claims={"scope": "orders:read"}),
                                       route("other", require_claims={"scope": "other"})])
    now = int(time.time())
    m = metrics(tp)
    for rt in ("orders", "other"):
        for reason in ("missing", "invalid", "expired", "forbidden"):
            assert m.value("turnpike_auth_rejected_total", route=rt, reason=reason) == 0, m.grep("auth_rejected")
    assert not m.series("turnpike_auth_rejected_total", route="open"), m.grep("auth_rejected")
    sends = {"missing": [[]] * 2,
             "invalid": [bearer("x.y.z"), bearer(tamper_payload(token(keys))), bearer(token(keys, iss="other"))],
             "expired": [bearer(token(keys, exp=now - 300, iat=now - 900, nbf=now - 900))] * 4,
             "forbidden": [bearer(token(keys, scope="orders:write"))] * 5}
    for reason, hdr_list in sends.items():
        for hdrs in hdr_list:
            refused(up, tp.port, 403 if reason == "forbidden" else 401, headers=hdrs)
    through(up, tp.port, headers=bearer(token(keys)))
    refused(up, tp.port, 403, "/other/x", bearer(token(keys)))
    m = metrics(tp)
    for reason, hdr_list in sends.items():
        assert m.value("turnpike_auth_rejected_total", route="orders", reason=reason) == len(hdr_list), \
            (reason, m.grep("auth_rejected"))
    assert m.value("turnpike_auth_rejected_total", route="other", reason="forbidden") == 1, m.grep("auth_rejected")
    assert m.total("turnpike_auth_rejected_total", route="other") == 1, m.grep("auth_rejected")
    assert m.value("turnpike_requests_total", route="orders", code="4xx") == 14, m.grep("requests_total")
    assert m.value("turnpike_requests_total", route="orders", code="2xx") == 1, m.grep("requests_total")


def test_access_log_subject(h, keys):
    log = h.tmp_path / "access.log"
    ak_path = h.tmp_path / "api-keys.yaml"
    write_api_keys(ak_path, API_KEYS)
    up, tp, _ = start(
        h, keys, access_log={"path": str(log), "format": "json"},
        extra_auth=[{"name": "partners", "api_key": {"keys": str(ak_path)}}],
        routes=[route("orders", require_claims={"scope": "orders:read"}), route("partners", provider_name="partners")])
    sends = [
        ("jwt", "/orders/1", bearer(token(keys, sub="alice@example.test")), 200, "alice@example.test"),
        ("forbidden", "/orders/2", bearer(token(keys, sub="bob", scope="none")), 403, "bob"),
        ("missing", "/orders/3", [], 401, None),
        # a token that does not verify names nobody: its sub is whatever the sender wrote
        ("invalid", "/orders/4", bearer(tamper_payload(token(keys))), 401, None),
        ("apikey", "/partners/1", key_hdr("beta"), 200, "beta"),
        ("bad apikey", "/partners/2", [("X-Api-Key", "nope")], 401, None),
        ("open", "/open/1", bearer(token(keys, sub="carol")), 200, None),
        ("no sub", "/orders/5", bearer(token(keys, sub=None)), 200, None),
    ]
    for i, (name, target, hdrs, status, _) in enumerate(sends):
        r = get(tp.port, target, headers=hdrs + [("X-Request-Id", f"req-{i}")])
        assert r.status == status, (name, r)
    wait_until(lambda: len(log.read_text().splitlines()) >= len(sends) if log.exists() else False, T(10),
               what=f"{len(sends)} access log lines")
    entries = {}
    for line in log.read_text().splitlines():
        e = json.loads(line)
        entries[e["request_id"]] = e
    for i, (name, _, _, status, subject) in enumerate(sends):
        e = entries[f"req-{i}"]
        assert e["status"] == status, (name, e)
        assert e["subject"] == subject, (name, e)


# --------------------------------------------------------------------------
# reload
# --------------------------------------------------------------------------


def several(tp, hdrs, n=4, target="/orders/r"):
    """n requests on fresh connections (both workers); their statuses."""
    return [get(tp.port, target, headers=hdrs).status for _ in range(n)]


def test_reload_rotates_keys(h, keys):
    up, tp, path = start(h, keys, kids=["rsa"])
    old, new = token(keys, "rsa", sub="old"), token(keys, "rsa2", sub="new")
    assert several(tp, bearer(old)) == [200] * 4  # cached on both workers now
    assert several(tp, bearer(new)) == [401] * 4
    write_jwks(path, keys, ["rsa2", "ec"])
    assert reload(tp) == 2
    assert several(tp, bearer(new)) == [200] * 4
    assert several(tp, bearer(old)) == [401] * 4, "a token of a removed key is still accepted after the reload"
    r, j = refused(up, tp.port, 401, headers=bearer(old))
    check_invalid(r, j)
    assert several(tp, bearer(token(keys, "ec"))) == [200] * 4


def reload_breaks(tp, path, text):
    """Writes text to the key file at path, reloads; waits until the failure counter grows.
    Returns the stderr written since."""
    fail0 = metrics(tp).value("turnpike_config_reloads_total", result="failure")
    err0 = len(tp.stderr())
    write_text_atomic(path, text)
    tp.signal(signal.SIGHUP)
    wait_until(lambda: metrics(tp).value("turnpike_config_reloads_total", result="failure") == fail0 + 1, T(10),
               what="reloads_total{result=failure} to grow")
    wait_until(lambda: "auth[0]" in tp.stderr()[err0:], T(5), what="the reload error on stderr")
    return tp.stderr()[err0:]


@pytest.mark.parametrize("broken", ['{"keys": [', "", '{"keys": []}', "not json at all\n"])
def test_reload_with_broken_jwks_keeps_old_keys(h, keys, broken):
    up, tp, path = start(h, keys, kids=["rsa"])
    assert several(tp, bearer(token(keys, sub="before"))) == [200] * 4
    err = reload_breaks(tp, path, broken)
    assert "auth[0].jwt.keys" in err, err
    assert generation(tp) == 1
    m = metrics(tp)
    assert m.value("turnpike_config_reloads_total", result="failure") == 1
    assert m.value("turnpike_config_reloads_total", result="success") == 0
    # a token never seen before (no cache entry): verified with the old keys
    assert several(tp, bearer(token(keys, sub="after"))) == [200] * 4
    assert several(tp, bearer(token(keys, "rsa2"))) == [401] * 4
    # a good file again: the next reload takes it
    write_jwks(path, keys, ["rsa2"])
    assert reload(tp) == 2
    assert several(tp, bearer(token(keys, "rsa2"))) == [200] * 4
    assert several(tp, bearer(token(keys, sub="after"))) == [401] * 4


def test_reload_rotates_api_keys(h):
    up, tp, path = start_api(h, [route("partners", provider_name="partners")], names=["alpha", "beta"])
    assert several(tp, key_hdr("alpha"), target="/partners/x") == [200] * 4
    assert several(tp, key_hdr("delta"), target="/partners/x") == [401] * 4
    write_api_keys(path, ["beta", "delta"])
    assert reload(tp) == 2
    assert several(tp, key_hdr("alpha"), target="/partners/x") == [401] * 4
    assert several(tp, key_hdr("delta"), target="/partners/x") == [200] * 4
    err = reload_breaks(tp, path, "- name: beta\n  sha256: not-hex\n")
    assert "auth[0].api_key.keys" in err, err
    assert several(tp, key_hdr("delta"), target="/partners/x") == [200] * 4


# --------------------------------------------------------------------------
# key files that stop a start and -t
# --------------------------------------------------------------------------

# The keys value sits at line 6, column 13 of this file.
START_CONF = """\
listeners:
  - address: 127.0.0.1:{port}
auth:
  - name: tenants
    {kind}:
      keys: {keys}
upstreams:
  - name: u
    endpoints:
      - address: 127.0.0.1:9
routes:
  - match: {{path_prefix: /}}
    upstream: u
    auth: {{provider: tenants}}
"""

SHORT_RSA = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}

BAD_FILES = {
    "jwks missing": ("jwt", None),
    "jwks not json": ("jwt", '{"keys": [}'),
    "jwks empty": ("jwt", ""),
    "jwks no usable key": ("jwt", '{"keys": []}'),
    "jwks short rsa": ("jwt", json.dumps(SHORT_RSA)),
    "api keys missing": ("api_key", None),
    "api keys not a list": ("api_key", "name: alpha\n"),
    "api keys bad digest": ("api_key", "- name: alpha\n  sha256: 1234\n"),
}


def bad_start_conf(tmp_path, case, keys=None):
    kind, text = BAD_FILES[case]
    kfile = tmp_path / ("keys.json" if kind == "jwt" else "keys.yaml")
    if text is not None:
        kfile.write_text(text)
    conf = tmp_path / "turnpike.yaml"
    conf.write_text(START_CONF.format(port=reserve_port(), kind=kind, keys=kfile))
    return conf, f"{conf}:6:13: auth[0].{kind}.keys: "


@pytest.mark.skipif(not BIN, reason="TURNPIKE_BIN is not set")
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_keys_file_fails_start_and_check(tmp_path, case):
    conf, prefix = bad_start_conf(tmp_path, case)
    r = subprocess.run([BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=T(20))
    assert (r.returncode, r.stdout) == (1, ""), (r.returncode, r.stdout, r.stderr)
    err = r.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and len(err[0]) > len(prefix), (prefix, r.stderr)
    r = subprocess.run([BIN, "-c", str(conf)], capture_output=True, text=True, timeout=T(20),
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r
    assert prefix in r.stderr, (prefix, r.stderr)


@pytest.mark.skipif(not BIN, reason="TURNPIKE_BIN is not set")
def test_good_auth_config_checks_ok(tmp_path, keys):
    kfile = tmp_path / "keys.json"
    write_jwks(kfile, keys, ["rsa", "ec", "ed", "hmac"])
    conf = tmp_path / "turnpike.yaml"
    conf.write_text(START_CONF.format(port=reserve_port(), kind="jwt", keys=kfile))
    r = subprocess.run([BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=T(20))
    assert (r.returncode, r.stdout, r.stderr) == (0, "configuration ok\n", ""), r


def test_query_token_not_in_combined_log(h, keys):
    """A token taken from the query string is replaced by "*" in the combined
    format's request line (the JSON format logs the path without the query),
    whether it was accepted or not; the rest of the query stays."""
    log = h.tmp_path / "access.log"
    up, tp, _ = start(h, keys, jwt_extra={"from": ["query:access_token"]},
                      access_log={"path": str(log), "format": "combined"})
    good = token(keys, sub="q-user")
    bad = tamper_signature(token(keys))
    through(up, tp.port, f"/orders/1?a=1&access_token={good}&b=2")
    r = get(tp.port, f"/orders/2?access_token={bad}")
    assert r.status == 401, r
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, T(10), what="2 access log lines")
    text = log.read_text()
    assert good not in text and bad not in text, text
    lines = text.splitlines()
    assert '"GET /orders/1?a=1&access_token=*&b=2 HTTP/1.1" 200' in lines[0], lines[0]
    assert lines[0].split()[2] == "q-user", lines[0]  # the subject is the remote user
    assert '"GET /orders/2?access_token=* HTTP/1.1" 401' in lines[1], lines[1]
