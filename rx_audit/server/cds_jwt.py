"""CDS Hooks 2.0 authentication of the EHR (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients): the
``Authorization: Bearer`` of a ``/cds-services`` call may be the EHR's JWT instead of an API key.

A JWT is accepted when (PyJWT):

* its ``iss`` is one of the configured issuers (``cds_issuers``) and its signature verifies with the
  key its header's ``kid`` names in that issuer's JWKS (fetched over HTTP(S) and cached; an unknown
  ``kid`` fetches the set once more — key rotation — then fails);
* its algorithm is an asymmetric one CDS Hooks names (RS256, RS384, ES384; never ``none`` nor an HMAC
  one, which would let a public key sign);
* it carries ``iss``, ``sub``, ``aud``, ``exp``, ``iat`` and ``jti``; ``aud`` is one of ours
  (``cds_audience``); it has not expired (30 s of clock leeway) and lives at most an hour;
* its ``jti`` has not been seen before in this worker (a replay is refused until the token expires).

The caller is then the issuer, bound to the issuer's facilities (as an API key is), named
``jwt:<iss>`` in logs and rate limits. Anything else is a 401 problem saying which check failed —
never the token.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
from jwt import PyJWKClient

from rx_audit.server.auth import ApiKey
from rx_audit.server.problems import Problem
from rx_audit.server.settings import CdsIssuer

ALGORITHMS = ["RS256", "RS384", "ES384"]
REQUIRED = ["iss", "sub", "aud", "exp", "iat", "jti"]
LEEWAY = 30  # seconds of clock difference between the EHR and us
MAX_LIFETIME = 3600  # CDS Hooks asks for short-lived tokens (5 minutes recommended)
JWKS_CACHE_SECONDS = 300


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("rxk_")


def _refused(why: str) -> Problem:
    return Problem(401, f"CDS Hooks JWT refused: {why}", kind="unauthorized",
                   headers={"WWW-Authenticate": 'Bearer realm="rx-audit", error="invalid_token"'})  # fmt: skip


class JwtVerifier:
    """The issuers' JWKS clients (one per issuer, cached) and the ``jti`` values seen, per worker."""

    def __init__(self, issuers: tuple[CdsIssuer, ...], audience: tuple[str, ...]):
        self.issuers = {issuer.iss: issuer for issuer in issuers}
        self.audience = list(audience)
        self._clients: dict[str, PyJWKClient] = {}
        self._seen: dict[str, float] = {}  # "iss jti" → exp
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.issuers) and bool(self.audience)

    def _client(self, issuer: CdsIssuer) -> PyJWKClient:
        with self._lock:
            client = self._clients.get(issuer.iss)
            if client is None:
                client = PyJWKClient(issuer.jwks_url, cache_jwk_set=True, lifespan=JWKS_CACHE_SECONDS, timeout=10)
                self._clients[issuer.iss] = client
            return client

    def verify(self, token: str) -> ApiKey:
        """The caller the token stands for, or a 401 :class:`Problem` (blocking: it may fetch the JWKS)."""
        if not self.enabled:
            raise _refused("no CDS Hooks issuer is configured (cds_issuers, cds_audience); use an API key")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refused("not a JWT") from None
        if header.get("alg") not in ALGORITHMS:
            raise _refused(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        issuer = self.issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise _refused("unknown issuer (iss)")
        if not header.get("kid"):
            raise _refused("no kid in the header")
        try:
            key = self._client(issuer).get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise _refused("the issuer's JWKS cannot be fetched") from None
        except jwt.PyJWKClientError:
            raise _refused("no key of the issuer's JWKS has this kid") from None
        claims = self._decode(token, key.key, issuer)
        self._once(issuer.iss, str(claims["jti"]), float(claims["exp"]))
        return ApiKey(f"jwt:{issuer.iss}", "", issuer.facilities)

    def _decode(self, token: str, key: Any, issuer: CdsIssuer) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=ALGORITHMS, audience=self.audience, issuer=issuer.iss, leeway=LEEWAY,
                options={"require": REQUIRED},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise _refused("expired (exp)") from None
        except jwt.InvalidAudienceError:
            raise _refused("aud is not this service") from None
        except jwt.MissingRequiredClaimError as error:
            raise _refused(f"the {error.claim} claim is required") from None
        except jwt.InvalidSignatureError:
            raise _refused("the signature does not verify") from None
        except jwt.PyJWTError as error:
            raise _refused(type(error).__name__) from None
        if float(claims["exp"]) - float(claims["iat"]) > MAX_LIFETIME:
            raise _refused("lives longer than an hour (exp - iat)")
        return claims

    def _once(self, iss: str, jti: str, expires: float) -> None:
        """Refuse a ``jti`` seen before (until its token expires: then it is refused as expired anyway)."""
        now = time.time()
        seen = f"{iss} {jti}"
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v + LEEWAY > now}
            if seen in self._seen:
                raise _refused("jti already used (a replay)")
            self._seen[seen] = expires
