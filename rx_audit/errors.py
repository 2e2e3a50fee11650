"""Exceptions of rx_audit, one base so an HIS can catch everything with one clause.

    RxAuditError
    ├── RulebookError            a rule file is wrong; carries file and line
    │   └── RulebookErrors       several rule-file errors found in one check
    ├── PrescriptionError        a prescription cannot be read; names its id and field
    ├── EngineError              durable_rules refused a ruleset or an evaluation
    └── QueueError               the review queue refused an operation
        ├── NotFoundError        no such prescription / review item (or outside the caller's scope)
        ├── StateError           the operation is not allowed in the item's current state
        ├── ReasonRequiredError  passing a critical finding needs a reason code and a comment
        ├── SchemaVersionError   the database is not at the current schema: run `rx-audit queue migrate`
        └── DatabaseError        the database failed (one line, password masked in any URL)
            ├── DatabaseUnavailableError  cannot connect, after bounded retries with back-off
            ├── DatabaseLockedError       a lock was not granted within the lock timeout
            ├── DatabaseReadOnlyError     the database (file, directory or role) is read-only
            └── DatabaseFullError         the disk or the database is full
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


class ReasonRequiredError(QueueError):
    """审核通过含“拦截”(critical)问题的处方，必须填写原因代码和说明 (a critical finding needs a reason code and
    a comment to be passed)."""


class SchemaVersionError(QueueError):
    """The database schema is missing or not at the version this code needs; run the migrate command."""


class DatabaseError(QueueError):
    """The database failed: down, locked, read-only or full. ``url`` has its password masked."""

    def __init__(self, message: str, url: str | None = None):
        self.url = url
        super().__init__(message)


class DatabaseUnavailableError(DatabaseError):
    """Cannot connect to the database (after bounded retries with back-off)."""


class DatabaseLockedError(DatabaseError):
    """A lock was not granted within the lock timeout (SQLite busy_timeout, PostgreSQL lock_timeout)."""


class DatabaseReadOnlyError(DatabaseError):
    """A write on a read-only database (file mode, directory, mount or role)."""


class DatabaseFullError(DatabaseError):
    """The disk or the database is full."""
