"""Compatibility: the rule-file examples runner moved to :mod:`rx_audit.engine.selftest`."""

from rx_audit.engine.selftest import ExampleOutcome, check_expectation, run_examples  # noqa: F401
