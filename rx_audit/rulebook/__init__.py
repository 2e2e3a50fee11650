"""The rulebook: rule files loaded line-aware, validated by pydantic, compiled for durable_rules.

Loading keeps the file and line of every mapping, so every error and every finding points at the
YAML a pharmacist wrote. Compiling turns each rule into a durable_rules condition and groups
them into rulesets — per drug and per drug or class for pairs of items (then packed into shared
rulesets, each rule starting with an equality on its drug or key), and global ones — each below
the ~512 rule paths durable holds (see ``rx_audit.engine.durable``).

Each compiled rule keeps what it needs to explain itself: id, category, severity, message,
``file:line``, the fact fields it read and the limit it compared against. For every field a rule
needs but a prescription may lack, the compiler also writes the rule's *missing-data twin*: the
same gate with the field absent, which fires a ``completeness`` finding instead of staying silent.

Modules, in the order a rule file travels through them: ``yaml_lines`` (reading) → ``schema``
(validation) → ``loader`` (orchestration) → ``compile_drug`` / ``compile_pairs`` /
``compile_global`` (one per check family) on ``compiler`` and ``conditions`` → ``model`` (the
compiled :class:`Rulebook`); ``names`` (drug-name matching), ``dictionary`` (the drug
dictionary), ``selftest`` (the examples written in the rule files).
"""

from rx_audit.contract import SEVERITY_RANK
from rx_audit.rulebook.loader import load_rulebook, rulebook_hash
from rx_audit.rulebook.model import CompiledRule, Drug, Rulebook, RuleExample
from rx_audit.rulebook.names import normalise_name
from rx_audit.rulebook.yaml_lines import LINE_KEY, LINES_KEY, load_yaml, strip_lines

__all__ = [
    "LINES_KEY",
    "LINE_KEY",
    "SEVERITY_RANK",
    "CompiledRule",
    "Drug",
    "RuleExample",
    "Rulebook",
    "load_rulebook",
    "load_yaml",
    "normalise_name",
    "rulebook_hash",
    "strip_lines",
]
