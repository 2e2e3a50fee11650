"""Normalisers: what the HIS writes, turned into what the rules compare.

Doses to the drug's unit (through ``strength`` for counts of tablets and for liquids), frequency
codes to administrations per day, Chinese and English routes and dosage forms to one vocabulary,
and ICD-10 codes to the prefixes a rule's code is matched against.

Every function returns ``None`` (never a guess) when it cannot normalise; the engine turns that
into a ``completeness`` finding.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

# --- amounts -------------------------------------------------------------------------------

# Mass in milligrams; IU and mL are their own dimensions.
_MASS_IN_MG = {"g": 1000.0, "mg": 1.0, "ug": 0.001, "ng": 0.000001, "kg": 1_000_000.0}
_UNIT_ALIASES = {
    "mcg": "ug", "μg": "ug", "µg": "ug", "微克": "ug", "毫克": "mg", "克": "g", "纳克": "ng",
    "iu": "IU", "u": "IU", "单位": "IU", "国际单位": "IU", "万单位": "10kIU", "万iu": "10kIU",
    "ml": "mL", "毫升": "mL", "l": "L", "升": "L",
}
# Counts of a dosage form: converted through the item's strength.
COUNT_UNITS = frozenset({
    "片", "粒", "袋", "支", "丸", "包", "枚", "瓶", "贴", "揿", "喷", "吸", "滴", "tablet", "tablets", "tab",
    "capsule", "capsules", "cap", "sachet", "sachets", "ampoule", "ampoules", "vial", "vials", "puff", "puffs",
    "patch", "pill", "pills", "drop", "drops", "piece",
})


@lru_cache(maxsize=1024)
def canonical_unit(unit: str) -> str:
    """``'MCG'`` → ``'ug'``, ``'毫克'`` → ``'mg'``, ``'片'`` → ``'片'``; unknown units come back stripped."""
    text = unicodedata.normalize("NFKC", unit).strip()
    lowered = text.lower()
    if lowered in _MASS_IN_MG:
        return lowered
    if lowered in _UNIT_ALIASES:
        return _UNIT_ALIASES[lowered]
    if text in _UNIT_ALIASES:
        return _UNIT_ALIASES[text]
    if lowered in COUNT_UNITS:
        return lowered
    return text


def _convert_simple(value: float, unit: str, target: str) -> float | None:
    """Convert between units of one dimension (mass, IU, volume); ``None`` across dimensions."""
    unit, target = canonical_unit(unit), canonical_unit(target)
    if unit == target:
        return value
    if unit in _MASS_IN_MG and target in _MASS_IN_MG:
        return value * _MASS_IN_MG[unit] / _MASS_IN_MG[target]
    if unit == "10kIU" and target == "IU":
        return value * 10_000
    if unit == "IU" and target == "10kIU":
        return value / 10_000
    if {unit, target} == {"mL", "L"}:
        return value * 1000 if unit == "L" else value / 1000
    return None


# The part after "/" of a concentration: "5mL", "5 mL", "mL". Matched on stripped text with no
# nested or adjacent optional whitespace: the earlier single pattern backtracked catastrophically
# on long runs of spaces (2,000 spaces 2 s, 10,000 over 120 s).
_PER_PART = re.compile(r"(?P<per>\d+(?:\.\d+)?)?\s?(?P<den>[A-Za-z\u4e00-\u9fff]+)")


@dataclass(frozen=True)
class Strength:
    """Amount of drug per unit of the form: per tablet (``per_unit=None``) or per ``per_amount`` mL."""

    value: float
    unit: str
    per_amount: float = 1.0
    per_unit: str | None = None


def parse_strength(value: float, unit: str) -> Strength:
    """``(500, 'mg')`` → 500 mg per tablet; ``(125, 'mg/5mL')`` → 125 mg per 5 mL."""
    numerator, slash, denominator = unit.partition("/")
    if slash:
        match = _PER_PART.fullmatch(" ".join(denominator.split()))
        if match and numerator.strip():
            per = float(match.group("per")) if match.group("per") else 1.0
            return Strength(value, canonical_unit(numerator.strip()), per, canonical_unit(match.group("den")))
    return Strength(value, canonical_unit(unit))


def dose_in_unit(
    value: float, unit: str, target: str, strength: tuple[float, str] | None = None
) -> float | None:
    """The dose in the drug's ``target`` unit, or ``None`` when it cannot be converted.

    Counts (``2 片``) and volumes (``5 mL`` of a 125 mg/5 mL suspension) go through ``strength``.
    """
    unit_c = canonical_unit(unit)
    direct = _convert_simple(value, unit_c, target)
    if direct is not None:
        return direct
    if strength is None:
        return None
    parsed = parse_strength(*strength)
    if parsed.value <= 0:
        return None
    if unit_c in COUNT_UNITS and parsed.per_unit is None:
        return _convert_simple(value * parsed.value, parsed.unit, target)
    if parsed.per_unit is not None:
        volume = _convert_simple(value, unit_c, parsed.per_unit)
        if volume is not None:
            return _convert_simple(volume / parsed.per_amount * parsed.value, parsed.unit, target)
    return None


# --- frequency -----------------------------------------------------------------------------

# Administrations per day. prn (必要时) and st (立即) count one administration: the per-dose limit
# still applies, and a daily total is never invented for an on-demand order.
TIMES_PER_DAY: dict[str, float] = {
    "qd": 1, "bid": 2, "tid": 3, "qid": 4, "q4h": 6, "q6h": 4, "q8h": 3, "q12h": 2, "q24h": 1, "qn": 1,
    "qm": 1, "qod": 0.5, "qw": 1 / 7, "biw": 2 / 7, "tiw": 3 / 7, "st": 1, "prn": 1, "once": 1,
}
_FREQUENCY_ALIASES = {
    "每日1次": "qd", "每日一次": "qd", "一日一次": "qd", "一日1次": "qd", "每天1次": "qd", "每天一次": "qd",
    "每日2次": "bid", "每日两次": "bid", "每日二次": "bid", "一日两次": "bid", "一日2次": "bid", "每天2次": "bid",
    "每日3次": "tid", "每日三次": "tid", "一日三次": "tid", "一日3次": "tid", "每天3次": "tid",
    "每日4次": "qid", "每日四次": "qid", "一日四次": "qid", "一日4次": "qid", "每天4次": "qid",
    "每晚1次": "qn", "每晚一次": "qn", "睡前": "qn", "每晨1次": "qd", "每早1次": "qd",
    "每周1次": "qw", "每周一次": "qw", "每周2次": "biw", "每周两次": "biw", "每周3次": "tiw", "每周三次": "tiw",
    "隔日1次": "qod", "隔日一次": "qod", "每4小时1次": "q4h", "每6小时1次": "q6h", "每8小时1次": "q8h",
    "每12小时1次": "q12h", "必要时": "prn", "需要时": "prn", "立即": "st", "立即执行": "st", "临时": "st",
    "1/d": "qd", "2/d": "bid", "3/d": "tid", "4/d": "qid", "od": "qd", "daily": "qd", "hs": "qn",
    "q1d": "qd", "q2d": "qod", "stat": "st", "once": "st", "1次/日": "qd", "2次/日": "bid", "3次/日": "tid",
}


def normalise_frequency(text: str) -> str | None:
    """``'TID'``, ``'每日3次'``, ``'t.i.d.'`` → ``'tid'``; unknown codes give ``None``."""
    cleaned = unicodedata.normalize("NFKC", text).strip().lower().replace(".", "").replace(" ", "")
    if cleaned in TIMES_PER_DAY:
        return cleaned
    return _FREQUENCY_ALIASES.get(cleaned)


# --- route and form ------------------------------------------------------------------------

ROUTES = ("po", "iv", "ivgtt", "im", "sc", "inh", "top", "pr", "sl", "ih", "oph", "nas", "vag")
_ROUTE_ALIASES = {
    "口服": "po", "oral": "po", "by mouth": "po", "os": "po", "静滴": "ivgtt", "静脉滴注": "ivgtt",
    "静脉点滴": "ivgtt", "iv drip": "ivgtt", "ivd": "ivgtt", "静推": "iv", "静注": "iv", "静脉注射": "iv",
    "intravenous": "iv", "ivp": "iv", "肌注": "im", "肌内注射": "im", "肌肉注射": "im", "intramuscular": "im",
    "皮下": "sc", "皮下注射": "sc", "subcutaneous": "sc", "subq": "sc", "吸入": "inh", "雾化吸入": "inh",
    "inhalation": "inh", "外用": "top", "涂抹": "top", "topical": "top", "tp": "top", "直肠": "pr",
    "塞肛": "pr", "纳肛": "pr", "rectal": "pr", "舌下": "sl", "舌下含服": "sl", "sublingual": "sl",
    "滴眼": "oph", "眼用": "oph", "滴鼻": "nas", "鼻用": "nas", "阴道": "vag", "鼻饲": "po", "ng": "po",
    "阴道给药": "vag", "阴道用": "vag", "直肠给药": "pr", "口服给药": "po", "静脉滴注给药": "ivgtt",
    "肌内注射给药": "im",
    "皮下注射给药": "sc", "吸入给药": "inh", "经眼给药": "oph", "经鼻给药": "nas", "局部外用": "top",
}


def normalise_route(text: str) -> str | None:
    cleaned = unicodedata.normalize("NFKC", text).strip().lower()
    if cleaned in ROUTES:
        return cleaned
    return _ROUTE_ALIASES.get(cleaned) or _ROUTE_ALIASES.get(text.strip())


FORM_GROUPS = ("oral_solid", "oral_liquid", "injection", "inhalation", "topical", "rectal", "ophthalmic", "nasal")


@dataclass(frozen=True)
class DosageForm:
    group: str
    release: str  # normal | sustained | controlled | enteric


# Ordered: the first keyword found decides, so 注射用… (powder for injection) is an injection and
# 干混悬剂 (dry suspension, mixed before it is swallowed) an oral liquid.
_FORM_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("注射", "injection"), ("针剂", "injection"), ("输液", "injection"), ("inject", "injection"),
    ("infusion", "injection"), ("powder for", "injection"), ("vial", "injection"), ("ampoule", "injection"),
    ("气雾", "inhalation"), ("吸入", "inhalation"), ("雾化", "inhalation"), ("inhal", "inhalation"),
    ("nebul", "inhalation"), ("滴眼", "ophthalmic"), ("眼膏", "ophthalmic"), ("eye", "ophthalmic"),
    ("ophthalm", "ophthalmic"), ("滴鼻", "nasal"), ("鼻喷", "nasal"), ("nasal", "nasal"),
    ("栓", "rectal"), ("suppositor", "rectal"), ("灌肠", "rectal"),
    ("乳膏", "topical"), ("软膏", "topical"), ("凝胶", "topical"), ("贴", "topical"), ("搽剂", "topical"),
    ("洗剂", "topical"), ("cream", "topical"), ("ointment", "topical"), ("gel", "topical"), ("patch", "topical"),
    ("lotion", "topical"), ("topical", "topical"), ("乳胶", "topical"), ("酊", "topical"), ("膏", "topical"),
    ("混悬", "oral_liquid"), ("糖浆", "oral_liquid"), ("口服液", "oral_liquid"), ("口服溶液", "oral_liquid"),
    ("滴剂", "oral_liquid"), ("溶液", "oral_liquid"), ("suspension", "oral_liquid"), ("syrup", "oral_liquid"),
    ("solution", "oral_liquid"), ("elixir", "oral_liquid"), ("drops", "oral_liquid"), ("liquid", "oral_liquid"),
    ("片", "oral_solid"), ("胶囊", "oral_solid"), ("颗粒", "oral_solid"), ("丸", "oral_solid"), ("散", "oral_solid"),
    ("干混悬", "oral_solid"), ("tablet", "oral_solid"), ("capsule", "oral_solid"), ("granule", "oral_solid"),
    ("pill", "oral_solid"), ("sachet", "oral_solid"), ("powder", "oral_solid"), ("tab", "oral_solid"),
    ("cap", "oral_solid"),
)
_RELEASE_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("缓释", "sustained"), ("sustained", "sustained"), ("extended", "sustained"), ("prolonged", "sustained"),
    ("modified", "sustained"), (" sr", "sustained"), (" er", "sustained"), (" xr", "sustained"),
    ("xl", "sustained"), ("控释", "controlled"), ("controlled", "controlled"), ("gits", "controlled"),
    ("肠溶", "enteric"), ("enteric", "enteric"), ("delayed", "enteric"),
)


def normalise_form(text: str) -> DosageForm | None:
    """``'缓释片'`` → (oral_solid, sustained); ``'注射用…'`` → (injection, normal); unknown → ``None``."""
    cleaned = " " + unicodedata.normalize("NFKC", text).strip().lower()
    group = next((group for word, group in _FORM_KEYWORDS if word in cleaned), None)
    if group is None:
        return None
    release = next((release for word, release in _RELEASE_KEYWORDS if word in cleaned), "normal")
    return DosageForm(group, release)


# --- ICD-10 --------------------------------------------------------------------------------

_ICD_CLEAN = re.compile(r"[^A-Z0-9]")


def normalise_icd(code: str) -> str:
    """``'E11.900'`` → ``'E11900'``; ``'I10.x00'`` → ``'I10X00'`` (Chinese extension kept as a suffix)."""
    return _ICD_CLEAN.sub("", unicodedata.normalize("NFKC", code).upper())


@lru_cache(maxsize=8192)
def icd_prefixes(code: str) -> tuple[str, ...]:
    """Every prefix of a normalised code a rule can name: ``'E11900'`` → E, E1, E11, E119, E1190, E11900."""
    normalised = normalise_icd(code)
    return tuple(normalised[:length] for length in range(1, len(normalised) + 1))


# --- prescriber title (CONTRACT §1) --------------------------------------------------------

TITLES = ("village_doctor", "resident", "attending", "associate_chief", "chief")
_TITLE_ALIASES = {
    "乡村医生": "village_doctor", "村医": "village_doctor", "乡村医师": "village_doctor",
    "住院医师": "resident", "医师": "resident", "执业医师": "resident", "执业助理医师": "resident",
    "主治医师": "attending", "主治": "attending",
    "副主任医师": "associate_chief", "副主任": "associate_chief",
    "主任医师": "chief", "主任": "chief",
    "village doctor": "village_doctor", "associate chief": "associate_chief",
}


def normalise_title(text: str) -> str | None:
    """``'主治医师'``, ``'attending'`` → ``'attending'``; unknown titles give ``None``."""
    cleaned = unicodedata.normalize("NFKC", text).strip().lower().replace("-", "_")
    if cleaned in TITLES:
        return cleaned
    return _TITLE_ALIASES.get(cleaned) or _TITLE_ALIASES.get(cleaned.replace("_", " "))


# --- quantity dispensed --------------------------------------------------------------------


def supply_days(
    quantity: tuple[float, str], dose: tuple[float, str], strength: tuple[float, str] | None, times_per_day: float
) -> float | None:
    """Days the dispensed quantity lasts at the written dose: 90 片, 1 片 tid → 30; 90 片 of 500 mg at
    1 g bid → 22.5; 100 mL of 125 mg/5 mL at 250 mg tid → 3.3. ``None`` when the units do not meet
    (a box, 盒, of unknown size)."""
    amount, unit = quantity
    value, dose_unit = dose
    if value <= 0 or times_per_day <= 0:
        return None
    per_day = value * times_per_day
    unit_c, dose_c = canonical_unit(unit), canonical_unit(dose_unit)
    if unit_c == dose_c:
        return amount / per_day
    if unit_c in COUNT_UNITS and dose_c in COUNT_UNITS:
        return None  # 片 against 粒, or a pack: not the same thing
    # The quantity in the dose's unit, through the strength where one side counts the form.
    in_dose_unit = dose_in_unit(amount, unit, dose_c, strength)
    if in_dose_unit is None and dose_c in COUNT_UNITS and strength is not None:
        # 2 片 a dose, 1 g dispensed: the dose in mass through the strength instead.
        dose_mass = dose_in_unit(value, dose_unit, canonical_unit(parse_strength(*strength).unit), strength)
        total = dose_in_unit(amount, unit, canonical_unit(parse_strength(*strength).unit), None)
        if dose_mass is None or total is None or dose_mass <= 0:
            return None
        return total / (dose_mass * times_per_day)
    return None if in_dose_unit is None else in_dose_unit / per_day
