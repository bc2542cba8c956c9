"""The independent side of the interop test (tests/interop.rs): the `sd-jwt` package from PyPI
(openwallet-foundation-labs/sd-jwt-python), on jwcrypto.

Reads one JSON request on stdin: {"jwks", "issued", "presentation", "tampered", "disclose"}.
Writes one JSON answer on stdout:
  verified_presentation  Consult's presentation as this library verifies it (payload with the
                         disclosed claims in place);
  tampered, tampered_error  what it made of Consult's presentation with an altered disclosure
                         (it drops a disclosure whose digest is not signed rather than refusing);
  presentation           a presentation this library built from Consult's issued certificate,
                         disclosing only `disclose`.
"""

import json
import sys

from jwcrypto.jwk import JWKSet
from sd_jwt.holder import SDJWTHolder
from sd_jwt.verifier import SDJWTVerifier

request = json.load(sys.stdin)
keys = JWKSet.from_json(json.dumps(request["jwks"]))


def issuer_key(issuer, header):
    key = keys.get_key(header["kid"])
    if key is None:
        raise ValueError(f"unknown key {header['kid']}")
    return key


answer = {}
answer["verified_presentation"] = SDJWTVerifier(request["presentation"], issuer_key).get_verified_payload()
try:
    answer["tampered"] = SDJWTVerifier(request["tampered"], issuer_key).get_verified_payload()
    answer["tampered_error"] = None
except Exception as error:  # the library raises several kinds
    answer["tampered"] = None
    answer["tampered_error"] = f"{type(error).__name__}: {error}"
holder = SDJWTHolder(request["issued"])
holder.create_presentation({name: True for name in request["disclose"]})
answer["presentation"] = holder.sd_jwt_presentation
json.dump(answer, sys.stdout)
