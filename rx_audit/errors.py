"""Exceptions of rx_audit, one base so an HIS can catch everything with one clause.

    RxAuditError
    ├── RulebookError            a rule file is wrong; carries file and line
    │   └── RulebookErrors       several rule-file errors found in one check
    ├── PrescriptionError        a prescription cannot be read; names its id and field
    ├── EngineError              durable_rules refused a ruleset or an evaluation
    └── QueueError               the review queue refused an operation
        ├── NotFoundError        no such prescription / review item
        └── StateError           the operation is not allowed in the item's current state
"""

from __future__ import annotations

from pathlib import Path


class RxAuditError(Exception):
    """Base of every error raised by rx_audit."""


class RulebookError(RxAuditError):
    """A rule file cannot be loaded or compiled."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(self.__str__())

    @property
    def location(self) -> str:
        if self.path is None:
            return "<rulebook>"
        return f"{self.path}:{self.line}" if self.line else self.path

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class RulebookErrors(RulebookError):
    """Every problem found in a rulebook, so a pharmacist fixes them in one pass."""

    def __init__(self, errors: list[RulebookError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, first.path, first.line)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class PrescriptionError(RxAuditError):
    """A prescription that cannot be read: not JSON, a required field missing, a negative dose."""

    def __init__(self, prescription_id: str | None, field: str | None, message: str, line: int | None = None):
        self.prescription_id = prescription_id
        self.field = field
        self.message = message
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"处方 {self.prescription_id or '(无id)'}"
        if self.line is not None:
            where += f" (line {self.line})"
        if self.field:
            where += f" 字段 {self.field}"
        return f"{where}: {self.message}"


class EngineError(RxAuditError):
    """durable_rules refused a ruleset or failed during an evaluation."""


class QueueError(RxAuditError):
    """The review queue refused an operation."""


class NotFoundError(QueueError):
    """No such prescription or review item."""


class StateError(QueueError):
    """The operation is not allowed in the item's current state (e.g. approving an unclaimed item)."""
