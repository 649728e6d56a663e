#!/usr/bin/env python3
"""Verifies Standard Webhooks `v1a` (ed25519) signatures with Python's `cryptography`, an
implementation independent of gancho's, as a receiver holding only public keys would.

usage: verify-v1a.py <requests.json> <whpk_...> [<whpk_...>...]

requests.json: a list of {"id", "timestamp", "body" (base64), "signature"} as received.
Every request must carry, for every public key given, a `v1a,` signature that verifies with
it. Prints one summary line; exits 1 and names the first failure otherwise.
"""
import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def public_key(text):
    if not text.startswith("whpk_"):
        raise SystemExit(f"not a whpk_ public key: {text[:12]}...")
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text[len("whpk_"):]))


def main():
    requests = json.load(open(sys.argv[1]))
    keys = [public_key(k) for k in sys.argv[2:]]
    if not requests or not keys:
        raise SystemExit("nothing to verify")
    for r in requests:
        signed = f"{r['id']}.{r['timestamp']}.".encode() + base64.b64decode(r["body"])
        sigs = [base64.b64decode(s[len("v1a,"):]) for s in r["signature"].split() if s.startswith("v1a,")]
        for n, key in enumerate(keys):
            ok = False
            for sig in sigs:
                try:
                    key.verify(sig, signed)
                    ok = True
                    break
                except InvalidSignature:
                    pass
            if not ok:
                raise SystemExit(f"request {r['id']}: no v1a signature verifies with public key {n + 1} "
                                 f"(header: {r['signature']!r})")
    print(f"verify-v1a: {len(requests)} requests, each verified with {len(keys)} public key(s)")


main()
