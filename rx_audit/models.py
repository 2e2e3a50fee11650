"""Compatibility: the contract models moved to :mod:`rx_audit.contract`."""

from rx_audit.contract import *  # noqa: F403
from rx_audit.contract import CATEGORY_LABELS_ZH, loads_record, parse_prescription  # noqa: F401
