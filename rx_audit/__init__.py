"""rx_audit — prescription audit (处方前置审核) on durable_rules.

>>> from rx_audit import Auditor
>>> auditor = Auditor.from_path("rules")
>>> result = auditor.audit(prescription_dict)
>>> result.flagged, [finding.rule for finding in result.findings]
"""

from rx_audit.contract import (
    AuditResult,
    Category,
    Finding,
    Prescription,
    RecordError,
    Severity,
    parse_prescription,
)
from rx_audit.engine import Auditor
from rx_audit.errors import (
    EngineError,
    NotFoundError,
    PrescriptionError,
    QueueError,
    RulebookError,
    RulebookErrors,
    RxAuditError,
    StateError,
)
from rx_audit.io import iter_records
from rx_audit.rulebook import Rulebook, load_rulebook

__all__ = [
    "AuditResult",
    "Auditor",
    "Category",
    "EngineError",
    "Finding",
    "NotFoundError",
    "Prescription",
    "PrescriptionError",
    "QueueError",
    "RecordError",
    "Rulebook",
    "RulebookError",
    "RulebookErrors",
    "RxAuditError",
    "Severity",
    "StateError",
    "iter_records",
    "load_rulebook",
    "parse_prescription",
]
