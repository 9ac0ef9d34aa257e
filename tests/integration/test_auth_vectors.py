# SPDX-License-Identifier: MIT
"""Tokens from an independent implementation, for every algorithm turnpike
verifies: PyJWT and pyca/cryptography (Debian python3-jwt,
python3-cryptography) make fresh keys and tokens at test time, the JWKS is
written from those keys, and tests/unit/auth/jwt_tool.c (TP_JWT_TOOL, set by
CMake) checks each token with src/auth. Valid tokens must pass; tampered,
expired, wrongly addressed or confused ones must fail with the right status
and reason. The API-key table is checked the same way against hashlib."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time

import pytest

jwt = pytest.importorskip("jwt")
pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402

TOOL = os.environ.get("TP_JWT_TOOL")
ISS = "https://id.example.test"
AUD = "orders-api"

ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "EdDSA"]
KID = {"HS": "hmac", "RS": "rsa", "PS": "rsa", "ES256": "ec256", "ES384": "ec384", "EdDSA": "ed"}

pytestmark = pytest.mark.skipif(not TOOL or not os.path.exists(TOOL),
                                reason="TP_JWT_TOOL is not set (run through ctest)")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_dec(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def kid_of(alg):
    return KID.get(alg) or KID[alg[:2]]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    k = {
        "hmac": os.urandom(64),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    jwks = [{"kty": "oct", "kid": "hmac", "k": b64u(k["hmac"])}]
    for kid, conv in (("rsa", RSAAlgorithm), ("ec256", ECAlgorithm), ("ec384", ECAlgorithm),
                      ("ed", OKPAlgorithm)):
        j = json.loads(conv.to_jwk(k[kid].public_key()))
        if j.get("kty") == "EC":
            # RFC 7518 6.2.1.2: x and y are the full field size; PyJWT 2.6 drops leading zero
            # bytes (1 key in 128 has a short coordinate), so they are written here from the numbers
            size = 32 if j["crv"] == "P-256" else 48
            nums = k[kid].public_key().public_numbers()
            j["x"] = b64u(nums.x.to_bytes(size, "big"))
            j["y"] = b64u(nums.y.to_bytes(size, "big"))
        j["kid"] = kid
        j["use"] = "sig"
        jwks.append(j)
    path = tmp_path_factory.mktemp("auth") / "jwks.json"
    path.write_text(json.dumps({"keys": jwks}))
    k["jwks_path"] = str(path)
    return k


def signing_key(keys, alg):
    return keys[kid_of(alg)]


def claims(**over):
    now = int(time.time())
    c = {"sub": "user-1", "iss": ISS, "aud": AUD, "iat": now, "nbf": now, "exp": now + 300}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def make(keys, alg, kid=True, **over):
    headers = {"kid": kid_of(alg)} if kid else None
    return jwt.encode(claims(**over), signing_key(keys, alg), algorithm=alg, headers=headers)


def run_tool(keys, tokens, *extra):
    """Verifies every token in one run; returns [(status, reason, sub)]."""
    args = [TOOL, "jwks", keys["jwks_path"], "--iss", ISS, "--aud", AUD, "--leeway", "5", *extra]
    out = subprocess.run(args, input="\n".join(tokens) + "\n", capture_output=True, text=True,
                         timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(tokens), out.stderr
    return [tuple(line.split("\t")) for line in lines]


def tamper_payload(token):
    h, p, s = token.split(".")
    body = json.loads(b64u_dec(p))
    body["sub"] = "admin"
    return ".".join([h, b64u(json.dumps(body).encode()), s])


def tamper_signature(token):
    h, p, s = token.split(".")
    sig = bytearray(b64u_dec(s))
    sig[len(sig) // 2] ^= 0x40
    return ".".join([h, p, b64u(bytes(sig))])


@pytest.mark.parametrize("alg", ALGS)
def test_algorithm(keys, alg):
    now = int(time.time())
    cases = [
        ("valid", make(keys, alg), ("ok", "ok", "user-1")),
        ("valid, no kid", make(keys, alg, kid=False), ("ok", "ok", "user-1")),
        ("valid, aud array", make(keys, alg, aud=["other", AUD]), ("ok", "ok", "user-1")),
        ("payload changed", tamper_payload(make(keys, alg)),
         ("invalid", "signature does not verify", "-")),
        ("signature changed", tamper_signature(make(keys, alg)),
         ("invalid", "signature does not verify", "-")),
        ("expired", make(keys, alg, exp=now - 60), ("expired", "exp has passed", "-")),
        ("expired within leeway", make(keys, alg, exp=now - 2), ("ok", "ok", "user-1")),
        ("no exp", make(keys, alg, exp=None), ("invalid", "exp missing", "-")),
        ("nbf ahead", make(keys, alg, nbf=now + 120), ("invalid", "nbf is in the future", "-")),
        ("wrong aud", make(keys, alg, aud="billing-api"),
         ("invalid", "aud is not an accepted audience", "-")),
        ("wrong iss", make(keys, alg, iss="https://evil.example"),
         ("invalid", "iss is not the configured issuer", "-")),
        ("unknown kid", jwt.encode(claims(), signing_key(keys, alg), algorithm=alg,
                                   headers={"kid": "rotated-away"}),
         ("invalid", "kid not found in the key set", "-")),
    ]
    got = run_tool(keys, [t for _, t, _ in cases])
    for (name, _, want), res in zip(cases, got):
        assert res == want, f"{alg} {name}"


def test_signature_sizes_differ_by_algorithm(keys):
    """ES signatures are r || s of the curve's size (PyJWT writes JOSE form, not DER)."""
    for alg, size in (("ES256", 64), ("ES384", 96), ("EdDSA", 64), ("RS256", 256), ("HS384", 48)):
        assert len(b64u_dec(make(keys, alg).split(".")[2])) == size, alg


def test_refusals(keys):
    rsa_pem = keys["rsa"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hdr = b64u(json.dumps({"alg": "HS256", "kid": "rsa", "typ": "JWT"}).encode())
    body = b64u(json.dumps(claims()).encode())
    # the classic confusion: HMAC keyed with the RSA public key, naming the RSA key
    confused = f"{hdr}.{body}." + b64u(hmac.new(rsa_pem, f"{hdr}.{body}".encode(),
                                                hashlib.sha256).digest())
    hdr_nokid = b64u(json.dumps({"alg": "HS256"}).encode())
    confused_nokid = f"{hdr_nokid}.{body}." + b64u(
        hmac.new(rsa_pem, f"{hdr_nokid}.{body}".encode(), hashlib.sha256).digest())
    unsecured = jwt.encode(claims(), None, algorithm="none")
    rs_token = make(keys, "RS256")
    h, p, s = rs_token.split(".")
    # the RS256 signature relabelled PS256 (same key, other padding)
    relabel = b64u(json.dumps({"alg": "PS256", "kid": "rsa"}).encode())
    crit = jwt.encode(claims(), keys["hmac"], algorithm="HS256",
                      headers={"kid": "hmac", "crit": ["exp"]})
    padded = rs_token + "=="
    es_h, es_p, es_s = make(keys, "ES256", kid=False).split(".")
    as_es384 = b64u(json.dumps({"alg": "ES384"}).encode())
    cases = [
        # kid "rsa" names an RSA key, which an HS alg never uses
        (confused, ("invalid", "alg does not fit the key named by kid", "-")),
        # no kid: HS256 takes the only oct key, whose secret is not the PEM
        (confused_nokid, ("invalid", "signature does not verify", "-")),
        # PyJWT's unsecured JWS has an empty signature: refused by shape, before the header
        (unsecured, ("invalid", "no signature (unsecured JWS)", "-")),
        (unsecured + "AAAA", ("invalid", "alg none is refused", "-")),
        (f"{relabel}.{p}.{s}", ("invalid", "signature does not verify", "-")),
        (crit, ("invalid", "crit header: no extension is understood", "-")),
        (padded, ("invalid", "signature is not unpadded base64url", "-")),
        # a P-256 signature presented as ES384 reaches the P-384 key with 64 bytes, not 96
        (f"{as_es384}.{es_p}.{es_s}", ("invalid", "signature length wrong for the alg", "-")),
    ]
    got = run_tool(keys, [t for t, _ in cases])
    for (tok, want), res in zip(cases, got):
        assert res == want, tok


def test_size_limit(keys):
    big = make(keys, "HS256", pad="x" * 3000)
    small = make(keys, "HS256")
    got = run_tool(keys, [big, small], "--max", "2048")
    assert got[0] == ("invalid", "token longer than the limit", "-")
    assert got[1] == ("ok", "ok", "user-1")


def test_bad_jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text('{"keys":[{"kty":"RSA","kid":"k1","n":"AQAB","e":"AQAB"}]}')
    out = subprocess.run([TOOL, "jwks", str(path)], input="", capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert 'key 1 (kid "k1"): RSA modulus of 17 bits' in out.stderr


def test_api_keys(tmp_path):
    secrets = {"alpha": os.urandom(24).hex(), "beta": b64u(os.urandom(30))}
    lines = []
    for name, secret in secrets.items():
        lines.append(f"- name: {name}\n  sha256: {hashlib.sha256(secret.encode()).hexdigest()}\n")
    lines.append("  tenant: acme\n")
    path = tmp_path / "keys.yaml"
    path.write_text("".join(lines))
    tried = [secrets["alpha"], secrets["beta"], secrets["alpha"][:-1], "", secrets["beta"].upper()]
    out = subprocess.run([TOOL, "apikeys", str(path)], input="\n".join(tried) + "\n",
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["ok\talpha\t-", "ok\tbeta\tacme", "missing", "missing",
                                       "missing"]
