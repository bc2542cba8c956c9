"""Sign the demo doctor of a running `consult serve --demo` in, and open a patient's place.

Prints shell assignments: DOCTOR_TOKEN, PATIENT_TOKEN, CONSULTATION_ID, INVITE.
Usage: python3 session.py BASE_URL DATA_DIR
"""
import base64
import hashlib
import hmac
import json
import struct
import sys
import time
import urllib.request


def totp(secret: str, at: float) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    counter = struct.pack(">Q", int(at) // 30)
    digest = hmac.new(key, counter, hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{code % 1_000_000:06d}"


def call(base: str, method: str, path: str, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def main() -> None:
    base, data_dir = sys.argv[1].rstrip("/"), sys.argv[2]
    with open(f"{data_dir}/demo-credentials.json", encoding="utf-8") as f:
        credentials = json.load(f)
    answer = call(
        base,
        "POST",
        "/api/v1/auth/login",
        {
            "email": credentials["email"],
            "password": credentials["password"],
            "totp": totp(credentials["totp_secret"], time.time()),
        },
    )
    token = answer["session"]["token"]
    created = call(base, "POST", "/api/v1/consultations", {"title": "API fuzzing"}, token)
    invite = created["invite_url"].split("#", 1)[1]
    place = call(base, "POST", "/api/v1/invites/redeem", {"invite": invite, "name": "Fuzz Patient"})
    print(f"DOCTOR_TOKEN={token}")
    print(f"PATIENT_TOKEN={place['participant_token']}")
    print(f"CONSULTATION_ID={created['id']}")
    print(f"INVITE={invite}")


if __name__ == "__main__":
    main()
