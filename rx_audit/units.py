"""Compatibility: the normalisers moved to :mod:`rx_audit.normalise`."""

from rx_audit.normalise import *  # noqa: F403
from rx_audit.normalise import (  # noqa: F401
    COUNT_UNITS,
    FORM_GROUPS,
    ROUTES,
    TIMES_PER_DAY,
    canonical_unit,
    dose_in_unit,
    icd_prefixes,
    normalise_form,
    normalise_frequency,
    normalise_icd,
    normalise_route,
    parse_strength,
)
