"""Normalisers: doses, frequencies, routes, forms and ICD-10 codes as the rules compare them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rx_audit.normalise import (
    TIMES_PER_DAY,
    canonical_unit,
    dose_in_unit,
    icd_prefixes,
    normalise_form,
    normalise_frequency,
    normalise_icd,
    normalise_route,
)

finite = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(finite)
def test_gram_milligram_microgram_round_trip(value):
    """g → mg → ug → g returns the same amount."""
    mg = dose_in_unit(value, "g", "mg")
    ug = dose_in_unit(mg, "mg", "ug")
    assert math.isclose(dose_in_unit(ug, "ug", "g"), value, rel_tol=1e-9)


@given(finite, st.sampled_from(["mcg", "μg", "µg", "ug", "UG", "微克"]))
def test_every_microgram_spelling_is_the_same_unit(value, spelling):
    assert math.isclose(dose_in_unit(value, spelling, "mg"), value / 1000, rel_tol=1e-12)


@given(st.integers(min_value=1, max_value=20), st.sampled_from(["片", "粒", "tablet", "Capsule", "袋"]),
       st.floats(min_value=0.01, max_value=5000, allow_nan=False))
def test_a_count_of_tablets_is_count_times_strength(count, unit, strength):
    assert math.isclose(dose_in_unit(count, unit, "mg", (strength, "mg")), count * strength, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("value", "unit", "target", "strength", "expected"),
    [
        (5, "mL", "mg", (125, "mg/5mL"), 125),  # suspension: 5 mL of 125 mg/5 mL
        (10, "ml", "mg", (25, "mg/mL"), 250),  # concentration per mL
        (2, "片", "mg", (0.5, "g"), 1000),  # strength in grams
        (1, "片", "ug", (50, "ug"), 50),  # levothyroxine tablets in micrograms
        (80, "万单位", "IU", None, 800_000),  # Chinese ten-thousand units
        (2, "袋", "mg", None, None),  # a count without strength cannot be converted
        (5, "mL", "mg", None, None),  # a volume without concentration cannot be converted
        (1, "IU", "mg", None, None),  # units of activity are not mass
        (1, "瓶子", "mg", (10, "mg"), None),  # unknown unit
    ],
)
def test_conversions_through_strength(value, unit, target, strength, expected):
    result = dose_in_unit(value, unit, target, strength)
    assert result == pytest.approx(expected) if expected is not None else result is None


@given(st.sampled_from(sorted(TIMES_PER_DAY)), st.booleans())
def test_frequency_codes_are_case_insensitive_and_idempotent(code, upper):
    text = code.upper() if upper else code
    assert normalise_frequency(text) == code
    assert normalise_frequency(normalise_frequency(text)) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("每日3次", "tid"),  # Chinese form from the contract
        ("每晚1次", "qn"),
        ("必要时", "prn"),
        ("立即", "st"),
        ("t.i.d.", "tid"),  # Latin with dots
        ("Q8H", "q8h"),
        ("每周1次", "qw"),
        ("sometimes", None),  # unknown: never guessed
    ],
)
def test_frequency_forms(text, expected):
    assert normalise_frequency(text) == expected


def test_prn_and_st_count_one_administration_a_day():
    """An on-demand order's daily total is never invented: it is one dose."""
    assert TIMES_PER_DAY["prn"] == 1
    assert TIMES_PER_DAY["st"] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("口服", "po"), ("静滴", "ivgtt"), ("静推", "iv"), ("肌注", "im"), ("皮下", "sc"), ("吸入", "inh"),
     ("外用", "top"), ("PO", "po"), ("IVGTT", "ivgtt"), ("鼻饲", "po"), ("xyz", None)],
)
def test_routes(text, expected):
    assert normalise_route(text) == expected


@pytest.mark.parametrize(
    ("text", "group", "release"),
    [
        ("tablet", "oral_solid", "normal"),
        ("缓释片", "oral_solid", "sustained"),
        ("控释片", "oral_solid", "controlled"),
        ("肠溶胶囊", "oral_solid", "enteric"),
        ("sustained-release tablet", "oral_solid", "sustained"),
        ("注射用头孢呋辛钠", "injection", "normal"),  # 注射用… is an injection, not a powder to swallow
        ("powder for injection", "injection", "normal"),
        ("混悬液", "oral_liquid", "normal"),
        ("干混悬剂", "oral_liquid", "normal"),
        ("吸入气雾剂", "inhalation", "normal"),
        ("乳膏", "topical", "normal"),
        ("栓剂", "rectal", "normal"),
    ],
)
def test_forms(text, group, release):
    form = normalise_form(text)
    assert form is not None and (form.group, form.release) == (group, release)


def test_unknown_form_is_none():
    assert normalise_form("神秘剂型") is None


@given(st.from_regex(r"[A-Z][0-9]{2}(\.[0-9x]{1,3})?", fullmatch=True))
def test_icd_prefixes_cover_the_three_character_category(code):
    prefixes = icd_prefixes(code)
    assert prefixes[-1] == normalise_icd(code)
    assert normalise_icd(code[:3]) in prefixes


@pytest.mark.parametrize(
    ("code", "normalised"),
    [("E11.900", "E11900"), ("I10.x00", "I10X00"), ("j06.9", "J069"), ("Ｅ１１", "E11")],  # full-width digits
)
def test_icd_normalisation(code, normalised):
    assert normalise_icd(code) == normalised


def test_canonical_units():
    assert canonical_unit("MG") == "mg"
    assert canonical_unit("毫克") == "mg"
    assert canonical_unit("U") == "IU"
