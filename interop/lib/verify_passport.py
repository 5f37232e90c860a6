#!/usr/bin/env python3
"""Verify a SHAKEN PASSporT independently of riptide, with the `cryptography` package.

  verify_passport.py IDENTITY_HEADER_VALUE LEAF_CERT_PEM

Checks, without any riptide code: the header is a full-form compact JWS followed by `;info=<x5u>`
(RFC 8224 §4.1); the JOSE header says alg ES256, ppt shaken, typ passport and x5u equal to info
(RFC 8225, RFC 8588); the claims have attest A/B/C, orig.tn, dest.tn and a numeric iat; and the
ES256 signature (raw r||s, RFC 7518 §3.4) verifies over `header.claims` with the certificate's
P-256 key. Prints `ok attest=X orig=... dest=...` and exits 0, or prints why and exits 1.
"""
import base64
import json
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def main(identity, pem_path):
    value = identity.strip()
    if value.lower().startswith("identity:"):
        value = value.split(":", 1)[1].strip()
    jws, _, params = value.partition(";")
    info = None
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "info":
            info = v.strip().strip("<>")
    h64, c64, s64 = jws.split(".")
    header = json.loads(b64url(h64))
    claims = json.loads(b64url(c64))
    problems = []
    if header.get("alg") != "ES256":
        problems.append(f"alg {header.get('alg')}")
    if header.get("ppt") != "shaken" or header.get("typ") != "passport":
        problems.append(f"ppt/typ {header.get('ppt')}/{header.get('typ')}")
    if header.get("x5u") != info:
        problems.append(f"x5u {header.get('x5u')} != info {info}")
    if claims.get("attest") not in ("A", "B", "C") or not isinstance(claims.get("iat"), int):
        problems.append(f"claims {claims}")
    sig = b64url(s64)
    if len(sig) != 64:
        problems.append(f"signature is {len(sig)} bytes, not r||s")
    with open(pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        problems.append("the certificate's key is not P-256")
    if not problems:
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            key.verify(der, f"{h64}.{c64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            problems.append("bad signature")
    if problems:
        print("FAIL " + "; ".join(problems))
        return 1
    print(f"ok attest={claims['attest']} orig={claims['orig']['tn']} dest={','.join(claims['dest']['tn'])}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
