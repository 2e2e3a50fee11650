"""rx_audit — prescription audit (处方前置审核) on durable_rules.

>>> from rx_audit import Auditor
>>> auditor = Auditor.from_path("rules")
>>> result = auditor.audit(prescription_dict)
>>> result.flagged, [finding.rule for finding in result.findings]
"""

from typing import TYPE_CHECKING

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
from rx_audit.engine.check import CheckReport, check_rulebook
from rx_audit.engine.selftest import ExampleOutcome, run_examples
from rx_audit.errors import (
    EngineError,
    NotFoundError,
    PrescriptionError,
    QueueError,
    ReasonRequiredError,
    RulebookError,
    RulebookErrors,
    RxAuditError,
    SchemaVersionError,
    StateError,
)
from rx_audit.io import iter_records
from rx_audit.rulebook import Rulebook, load_rulebook
from rx_audit.rulebook.views import DrugInfo, RuleInfo, drug_infos, rule_infos, rules_of

__version__ = "0.2.0"

# The review queue needs the database stack (extra `queue`); it is imported on first use, so an HIS
# that only audits never loads SQLAlchemy.
_QUEUE_NAMES = frozenset({"ReviewQueue", "ReviewItem", "ReviewDetail", "Decision", "TrailEntry", "SearchHit",
                          "Reason", "Submission", "VerifyResult", "migrate", "STATUSES", "READY_STATUSES",
                          "QueueStatistics", "GroupStatistics", "Rate", "DecisionTime", "RuleOverride"})

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers (explicit re-exports; nothing imported at run time)
    from rx_audit.queue import READY_STATUSES as READY_STATUSES
    from rx_audit.queue import STATUSES as STATUSES
    from rx_audit.queue import Decision as Decision
    from rx_audit.queue import DecisionTime as DecisionTime
    from rx_audit.queue import GroupStatistics as GroupStatistics
    from rx_audit.queue import QueueStatistics as QueueStatistics
    from rx_audit.queue import Rate as Rate
    from rx_audit.queue import Reason as Reason
    from rx_audit.queue import ReviewDetail as ReviewDetail
    from rx_audit.queue import ReviewItem as ReviewItem
    from rx_audit.queue import ReviewQueue as ReviewQueue
    from rx_audit.queue import RuleOverride as RuleOverride
    from rx_audit.queue import SearchHit as SearchHit
    from rx_audit.queue import Submission as Submission
    from rx_audit.queue import TrailEntry as TrailEntry
    from rx_audit.queue import VerifyResult as VerifyResult
    from rx_audit.queue import migrate as migrate


def __getattr__(name: str) -> object:
    if name in _QUEUE_NAMES:
        from rx_audit import queue

        return getattr(queue, name)
    raise AttributeError(f"module 'rx_audit' has no attribute {name!r}")

__all__ = [
    "AuditResult",
    "Auditor",
    "Category",
    "CheckReport",
    "DrugInfo",
    "EngineError",
    "ExampleOutcome",
    "Finding",
    "NotFoundError",
    "Prescription",
    "PrescriptionError",
    "QueueError",
    "ReasonRequiredError",
    "RecordError",
    "RuleInfo",
    "Rulebook",
    "RulebookError",
    "RulebookErrors",
    "RxAuditError",
    "SchemaVersionError",
    "Severity",
    "StateError",
    "check_rulebook",
    "drug_infos",
    "iter_records",
    "load_rulebook",
    "parse_prescription",
    "rule_infos",
    "rules_of",
    "run_examples",
]
# The queue's names are not in __all__: `from rx_audit import *` must work on a core install too.
