"""Coded reasons for decisions (``rx_audit/reasons.yaml``: Chinese labels, ``A01…`` approve /
``R01…`` return), extended or relabelled by the site's own YAML files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml

from rx_audit.errors import QueueError
from rx_audit.queue.schemas import Reason

DEFAULT_REASONS = Path(__file__).resolve().parents[1] / "reasons.yaml"


def load_reasons(*paths: str | Path | None) -> dict[str, Reason]:
    """The shipped reasons, then each extra YAML file merged by code (later files win)."""
    reasons: dict[str, Reason] = {}
    for path in (DEFAULT_REASONS, *paths):
        if not path:
            continue
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream) or {}
        for kind in ("approve", "return"):
            for entry in data.get(kind) or []:
                reason = Reason(kind=kind, **entry)
                reasons[reason.code] = reason
    return reasons


class Reasons:
    """The reasons a queue accepts: shipped, then ``reasons`` files, then ``$RX_AUDIT_REASONS``."""

    def __init__(self, reasons: str | Path | Sequence[str | Path] | None = None) -> None:
        extra = [reasons] if isinstance(reasons, (str, Path)) else list(reasons or [])
        if os.environ.get("RX_AUDIT_REASONS"):
            extra.append(os.environ["RX_AUDIT_REASONS"])
        self._reasons = load_reasons(*extra)

    def reasons(self, kind: Literal["approve", "return"] = "approve") -> list[Reason]:
        """The coded reasons a pharmacist picks from (shipped ``reasons.yaml`` + extensions)."""
        return [reason for reason in self._reasons.values() if reason.kind == kind]

    def _reason(self, kind: str, code: str) -> Reason:
        reason = self._reasons.get(code)
        if reason is None or reason.kind != kind:
            known = ", ".join(r.code for r in self._reasons.values() if r.kind == kind)
            raise QueueError(f"未知的{kind}原因代码 {code!r} (unknown reason code; known: {known})")
        return reason
