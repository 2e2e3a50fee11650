"""How drug names are compared and matched: NFKC, case, spaces and brackets folded; salt and form
words removed step by step.
"""

from __future__ import annotations

import re
import unicodedata

_NAME_STRIP = re.compile(r"[\s\-_·・()（）]")


# What an HIS adds around a generic name: the salt (盐酸二甲双胍) and the dosage form
# (…缓释片, …注射液). Only these known words are taken off — never an arbitrary part of the name,
# so a combination product (氨氯地平贝那普利片) is not mistaken for one of its ingredients.
_SALT_PREFIXES = ("注射用", "盐酸", "硫酸", "马来酸", "苯磺酸", "甲磺酸", "酒石酸", "琥珀酸", "乳酸", "磷酸", "枸橼酸",
                  "富马酸", "醋酸", "氢溴酸", "门冬氨酸", "重酒石酸")
_FORM_SUFFIXES = tuple(sorted((
    "片", "胶囊", "软胶囊", "缓释片", "控释片", "肠溶片", "肠溶胶囊", "缓释胶囊", "分散片", "咀嚼片", "泡腾片",
    "颗粒", "干混悬剂", "口服混悬液", "混悬液", "口服溶液", "口服液", "糖浆", "注射液", "氯化钠注射液", "葡萄糖注射液", "滴剂",
    "乳膏", "软膏", "凝胶", "乳胶剂",
    "栓", "tablets", "tablet", "capsules", "capsule", "injection", "suspension", "syrup",
), key=len, reverse=True))
_SALT_SUFFIXES = ("钠", "钾", "钙", "镁", "hydrochloride", "hcl", "sodium", "potassium", "calcium", "besylate",
                  "maleate", "mesylate", "tartrate", "succinate")


def name_variants(text: str) -> list[str]:
    """The name with known salt and form words removed, step by step, most specific first."""
    name = normalise_name(text)
    variants = []
    for prefix in _SALT_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
            variants.append(name)
    for suffixes in (_FORM_SUFFIXES, _SALT_SUFFIXES):
        for suffix in suffixes:
            if name.endswith(suffix) and len(name) > len(suffix) + 1:
                name = name[: -len(suffix)]
                variants.append(name)
                break
    return variants


def normalise_name(text: str) -> str:
    """How drug names are compared: NFKC, lower case, no spaces, hyphens or brackets."""
    return _NAME_STRIP.sub("", unicodedata.normalize("NFKC", text).lower())


