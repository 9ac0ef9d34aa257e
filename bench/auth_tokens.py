#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bench/auth_tokens.py: the key material of bench/features.sh's auth scenario.

Makes a fresh RSA-2048 key, writes its public half as a JWKS (OUT/jwks.json)
and OUT/tokens.txt: one RS256 token per line for USERS users (sub u0..uN-1,
iss/aud of the bench provider, valid for TTL seconds from now). Tokens are
signed by PyJWT (Debian python3-jwt, python3-cryptography), not by turnpike.

usage: bench/auth_tokens.py --out DIR [--users N] [--ttl SECONDS]
"""
import argparse
import json
import os
import sys
import time

try:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm
except ImportError as e:
    sys.exit(f"auth_tokens.py: {e} (Debian: apt-get install python3-jwt python3-cryptography)")

ISSUER = "https://id.bench.test"
AUDIENCE = "bench-api"
KID = "bench-rsa"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for jwks.json and tokens.txt")
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--ttl", type=int, default=86400, help="seconds the tokens stay valid")
    a = ap.parse_args()
    if a.users < 1 or a.ttl < 60:
        ap.error("--users must be at least 1 and --ttl at least 60")
    os.makedirs(a.out, exist_ok=True)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    pub.update(kid=KID, use="sig", alg="RS256")
    with open(os.path.join(a.out, "jwks.json"), "w") as f:
        json.dump({"keys": [pub]}, f)

    now = int(time.time())
    tmp = os.path.join(a.out, "tokens.txt.tmp")
    with open(tmp, "w") as f:
        for i in range(a.users):
            claims = {"sub": f"u{i}", "tenant": f"t{i % 100}", "iss": ISSUER, "aud": AUDIENCE,
                      "iat": now, "nbf": now, "exp": now + a.ttl}
            f.write(jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID}) + "\n")
    os.replace(tmp, os.path.join(a.out, "tokens.txt"))


if __name__ == "__main__":
    main()
