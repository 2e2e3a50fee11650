"""``rx-audit serve``: the HTTP service of CONTRACT §4 for an HIS in any language (extra ``server``).

One module per idea:

* :mod:`.settings`  what the service is run with (environment, a TOML file, or the command line)
* :mod:`.auth`      API keys, stored as sha256 hashes in a TOML file, each bound to facilities; rate limits
* :mod:`.problems`  RFC 9457 ``application/problem+json`` for every error, naming the field, no internals
* :mod:`.context`   the services, the caller (key, rate limit) and the bounded body of a request
* :mod:`.metrics`   the Prometheus metrics
* :mod:`.state`     the state of a prescription an HIS releases or blocks payment on
* :mod:`.routes_audit`, :mod:`.routes_prescriptions`  the ``/v1`` endpoints
* :mod:`.ops`       ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and the JSON access log
* :mod:`.app`       ``create_app(settings)``: the auditor loaded once, one ``ReviewQueue``
* :mod:`.run`       running it under uvicorn (several workers share the queue database)
* :mod:`.keys`      ``python -m rx_audit.server.keys new --facility LZH``: a new key and its hash line
* :mod:`.openapi`   the published OpenAPI schema (bodies, answers, problems), held to by schemathesis
* :mod:`.reload`    hot reload of the rulebook: SIGHUP or ``POST /v1/admin/reload`` (admin keys)
* :mod:`.cds_jwt`   CDS Hooks 2.0 JWT of an EHR, verified against its issuer's JWKS (PyJWT)
* :mod:`.webhooks`, :mod:`.routes_webhooks`  signed webhooks: the deliverer, registration and admin

Nothing outside this package imports FastAPI or uvicorn (an import-linter contract).
"""

from __future__ import annotations

from typing import Any

from rx_audit.server.settings import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings) -> Any:
    """The ASGI app (imported lazily: ``import rx_audit.server`` alone loads no FastAPI)."""
    from rx_audit.server.app import create_app as _create_app

    return _create_app(settings)
