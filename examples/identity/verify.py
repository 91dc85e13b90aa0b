#!/usr/bin/env python3
"""Verifies sandgate's X-Sandgate-Identity header (needs: pip install pyjwt cryptography).

    python3 verify.py JWKS_URL TOKEN AUDIENCE   # prints the claims, or exits 1

AUDIENCE is "<sandboxId>:<port>" of the app checking it: a token for another sandbox or port
is refused. JWKS_URL: https://<proxy host>/.well-known/sandgate-jwks.json
"""
import json
import sys

import jwt


def verify_identity(token, jwks_url, audience, issuer="sandgate"):
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["EdDSA", "ES256"], audience=audience,
                      issuer=issuer, options={"require": ["sub", "aud", "iat", "exp"]})


if __name__ == "__main__":
    jwks_url, token, audience = sys.argv[1:4]
    try:
        print(json.dumps(verify_identity(token, jwks_url, audience)))
    except jwt.PyJWTError as e:
        sys.exit(f"rejected: {e}")
