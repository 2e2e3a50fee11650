"""CDS Hooks 2.0 JWT authentication of the EHR: the test serves a JWKS (an RSA and a P-384 key) over HTTP
on 127.0.0.1; a token signed by the EHR's key, for our audience, is accepted on /cds-services (RS256 and
ES384); a wrong aud, an expired token, an unknown kid, an unsigned or HMAC token, an unknown issuer, a
missing claim or a replayed jti are each a 401 problem+json saying which — and a JWT is no key for
/v1. The app is in process; the JWKS is fetched over a real socket."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import FACILITY_A, auth

jwt = pytest.importorskip("jwt")
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: E402

from rx_audit.server.settings import CdsIssuer  # noqa: E402
from tests.adapters.test_cds_hooks import order_sign_request  # noqa: E402

ISSUER = "https://ehr.lzh.example.cn"
AUDIENCE = "https://rx-audit.example.cn/cds-services/rx-audit-order-sign"
SERVICE = "/cds-services/rx-audit-order-sign"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # not in the JWKS
# Authentication does not depend on the database: SQLite only.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


class Jwks:
    """The EHR's JWKS endpoint on 127.0.0.1 (counts its fetches: the client caches)."""

    def __init__(self) -> None:
        keys = [
            {**json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            {**json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key())), "kid": "ec-1", "alg": "ES384", "use": "sig"},
        ]
        body = json.dumps({"keys": keys}).encode()
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    served = Jwks()
    yield served
    served.close()


@pytest.fixture
def ehr_client(make_client, jwks):
    return make_client(cds_issuers=(CdsIssuer(ISSUER, jwks.url, frozenset({FACILITY_A})),), cds_audience=(AUDIENCE,))


def token(key: Any = RSA_KEY, alg: str = "RS256", kid: str = "rsa-1", **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "ehr-client-1", "aud": AUDIENCE, "iat": now, "exp": now + 300,
              "jti": uuid.uuid4().hex}  # fmt: skip
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def hmac_with_public_key() -> str:
    """The algorithm-confusion attack: HS256 "signed" with the EHR's public key (PyJWT refuses to make
    one, so it is made by hand)."""
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "x", "aud": AUDIENCE, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + "." + b64(
        json.dumps(claims).encode())  # fmt: skip
    public = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return signing + "." + b64(hmac.new(public, signing.encode(), hashlib.sha256).digest())


def refused(response, because: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert because in response.json()["detail"], response.json()["detail"]
    assert "WWW-Authenticate" in response.headers


def test_a_token_signed_by_the_ehrs_key_is_accepted_rs256_and_es384(ehr_client, jwks):
    """Discovery and order-sign with a valid RS256 token, order-sign with ES384: cards for the issuer's
    facility; the JWKS is fetched once for both (cached)."""
    assert ehr_client.get("/cds-services", headers=auth(token())).status_code == 200
    answer = ehr_client.post(SERVICE, json=order_sign_request(), headers=auth(token()))
    assert answer.status_code == 200, answer.text
    assert answer.json()["cards"] and answer.json()["cards"][0]["indicator"] == "critical"
    es = ehr_client.post(SERVICE, json=order_sign_request(), headers=auth(token(EC_KEY, "ES384", "ec-1")))
    assert es.status_code == 200, es.text
    assert jwks.fetches == 1


@pytest.mark.parametrize(
    ("make", "because"),
    [
        (lambda: token(aud="https://someone-else.example.cn/cds-services"), "aud"),
        (lambda: token(iat=int(time.time()) - 900, exp=int(time.time()) - 600), "expired"),
        (lambda: token(OTHER_KEY, kid="rsa-2"), "kid"),
        (lambda: token(OTHER_KEY), "signature"),
        (lambda: token(None, alg="none"), "algorithm"),
        (lambda: hmac_with_public_key(), "algorithm"),
        (lambda: token(iss="https://evil.example.com"), "issuer"),
        (lambda: token(jti=None), "jti"),
        (lambda: token(sub=None), "sub"),
        (lambda: token(kid=""), "kid"),
        (lambda: token(exp=int(time.time()) + 7200), "hour"),
    ],
    ids=["wrong-aud", "expired", "unknown-kid", "bad-signature", "unsigned", "hmac-with-public-key",
         "unknown-issuer", "no-jti", "no-sub", "no-kid", "too-long-lived"],
)
def test_a_bad_token_is_a_401_problem_saying_why(ehr_client, make, because):
    """Each refusal is a 401 problem+json naming the failed check; the token is never echoed."""
    presented = make()
    answer = ehr_client.post(SERVICE, json=order_sign_request(), headers=auth(presented))
    refused(answer, because)
    assert presented not in answer.text


def test_a_replayed_token_is_refused_and_a_jwt_is_no_key_for_v1(ehr_client):
    """The same jti twice: the second is a replay (401). A JWT on /v1/audit is an unknown API key."""
    once = token()
    assert ehr_client.get("/cds-services", headers=auth(once)).status_code == 200
    refused(ehr_client.get("/cds-services", headers=auth(once)), "replay")
    other = ehr_client.post("/v1/audit", json={"id": "x"}, headers=auth(token()))
    assert other.status_code == 401 and other.json()["detail"] == "unknown API key"


def test_without_configured_issuers_a_jwt_is_refused(make_client, settings):
    """No cds_issuers/cds_audience: a JWT on /cds-services is a 401 telling to configure or use a key."""
    client = make_client(**{f: v for f, v in vars(replace(settings)).items() if f.startswith("cds_")})
    refused(client.get("/cds-services", headers=auth(token())), "no CDS Hooks issuer")
