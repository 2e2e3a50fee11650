"""``ReviewQueue``: the review queue on one database, composed of its parts —
:class:`~rx_audit.queue.store.QueueStore` (engines, sessions), :class:`~rx_audit.queue.chain.ChainedStore`
(hash chains, verify), :class:`~rx_audit.queue.intake.Intake` (submit, resubmit, replay bookkeeping),
:class:`~rx_audit.queue.workflow.Workflow` (claims, decisions, timeouts),
:class:`~rx_audit.queue.reads.Reads` and :class:`~rx_audit.queue.statistics.Statistics`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rx_audit.errors import QueueError
from rx_audit.queue.cds import CdsCards
from rx_audit.queue.common import TimeoutPolicy
from rx_audit.queue.database import DEFAULT_LOCK_TIMEOUT
from rx_audit.queue.intake import Intake
from rx_audit.queue.reads import Reads
from rx_audit.queue.reasons import Reasons
from rx_audit.queue.statistics import Statistics
from rx_audit.queue.store import QueueStore
from rx_audit.queue.workflow import Workflow


class ReviewQueue(Intake, Workflow, Reads, Statistics, CdsCards):
    """The review queue on one database. Thread-safe; one instance per process is enough.

    >>> q = ReviewQueue("sqlite:///queue.db")       # after `rx-audit queue migrate --db sqlite:///queue.db`
    >>> item = q.submit(prescription, auditor.audit(prescription))   # None when not flagged
    >>> item = q.claim_next("ph01", facilities=["LZH"], scope=["LZH", "HXZ"])
    >>> q.approve(item.id, "ph01", "A01", "已核实", scope=["LZH", "HXZ"])
    """

    def __init__(
        self,
        url: str = "sqlite:///rx_audit.db",
        *,
        timeout_policy: TimeoutPolicy = "hold",
        timeout_seconds: float = 1800.0,
        reasons: str | Path | Sequence[str | Path] | None = None,
        echo: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        statement_timeout: float = 300.0,
        read_only: bool | None = None,
    ):
        if timeout_policy not in ("hold", "escalate", "pass"):
            raise QueueError(f"timeout_policy must be hold, escalate or pass, not {timeout_policy!r}")
        self.timeout_policy = timeout_policy
        self.timeout_seconds = float(timeout_seconds)
        Reasons.__init__(self, reasons)
        QueueStore.__init__(
            self,
            url,
            echo=echo,
            lock_timeout=lock_timeout,
            statement_timeout=statement_timeout,
            read_only=read_only,
        )
