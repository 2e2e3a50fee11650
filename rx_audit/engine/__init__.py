"""The engine: a prescription's facts asserted into durable_rules, every fired rule explained.

``auditor`` (the :class:`Auditor` an HIS holds), ``resolve`` (drug identity and normalised
values), ``facts`` (the JSON durable matches), ``durable`` (the adapter — the only module that
imports durable_rules; its docstring says what was measured of durable 2.0.28 and why the engine
drives it the way it does), ``explain`` (findings and the verdict).
"""

from rx_audit.engine.auditor import Auditor
from rx_audit.engine.facts import Facts, facts_for
from rx_audit.engine.resolve import ResolvedItem, ResolvedPrescription, resolve

__all__ = ["Auditor", "Facts", "ResolvedItem", "ResolvedPrescription", "facts_for", "resolve"]
