"""How drug names are compared and matched: NFKC, case, spaces and brackets folded; salt and form
words removed step by step.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

_NAME_STRIP = re.compile(r"[\s\-_·・()（）]")


# What an HIS adds around a generic name: the salt (盐酸二甲双胍) and the dosage form
# (…缓释片, …注射液). Only these known words are taken off — never an arbitrary part of the name,
# so a combination product (氨氯地平贝那普利片) is not mistaken for one of its ingredients.
_SALT_PREFIXES = ("注射用", "吸入用", "氨丁三醇", "盐酸", "硫酸", "马来酸", "苯磺酸", "甲磺酸", "酒石酸", "琥珀酸",
                  "乳酸", "磷酸", "枸橼酸", "富马酸", "醋酸", "氢溴酸", "门冬氨酸", "重酒石酸")
_FORM_SUFFIXES = tuple(sorted((
    "片", "胶囊", "软胶囊", "缓释片", "控释片", "肠溶片", "肠溶胶囊", "缓释胶囊", "控释胶囊", "分散片", "咀嚼片",
    "泡腾片", "口崩片", "口腔崩解片", "含片", "舌下片", "阴道片", "阴道泡腾片", "薄膜衣片", "糖衣片",
    "颗粒", "干混悬剂", "口服混悬液", "混悬液", "口服溶液", "口服液", "糖浆", "注射液", "氯化钠注射液",
    "葡萄糖注射液", "注射剂", "粉针", "冻干粉针", "输液", "滴剂", "乳膏", "软膏", "凝胶", "乳胶剂", "贴剂", "贴膏",
    "滴眼液", "眼膏", "眼用凝胶", "滴耳液", "滴鼻液", "鼻喷雾剂", "喷雾剂", "气雾剂", "吸入气雾剂", "吸入粉雾剂",
    "吸入剂", "吸入溶液", "雾化溶液", "混悬吸入剂", "栓", "阴道栓", "搽剂", "洗剂", "酊", "酊剂", "散", "丸",
    "滴丸", "浓缩丸", "水丸", "蜜丸", "鼻用喷雾剂", "乳剂", "透皮贴剂", "乳状注射液", "溶液", "针", "针剂", "粉针剂",
    "合剂", "口服乳剂", "缓释颗粒", "胶丸", "膏", "tablets", "tablet", "capsules", "capsule", "injection",
    "suspension", "syrup",
), key=len, reverse=True))
_SALT_SUFFIXES = tuple(sorted((
    "钠", "钾", "钙", "镁", "锌", "hydrochloride", "hcl", "sodium", "potassium", "calcium", "magnesium", "besylate",
    "maleate", "mesylate", "tartrate", "succinate", "hyclate", "monohydrate", "dihydrate", "trihydrate", "fumarate",
    "citrate", "phosphate", "sulfate", "sulphate", "acetate", "bromide", "hydrobromide", "axetil", "dipropionate",
    "propionate", "besilate", "mesilate", "malate", "lactate", "gluconate", "xinafoate",
), key=len, reverse=True))


def _strip_form(name: str) -> str:
    return next((name[: -len(suffix)] for suffix in _FORM_SUFFIXES
                 if name.endswith(suffix) and len(name) > len(suffix) + 1), name)


def name_variants(text: str) -> list[str]:
    """The name with known form and salt words removed, step by step, most specific first.

    The form word comes off first on its own: 门冬氨酸钾镁注射液 is 门冬氨酸钾镁, not 钾镁 (门冬氨酸
    is also a salt prefix elsewhere)."""
    original = normalise_name(text)
    variants = [without_form] if (without_form := _strip_form(original)) != original else []
    name = original
    for prefix in _SALT_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
            variants.append(name)
    for suffixes in (_FORM_SUFFIXES, _SALT_SUFFIXES):
        for suffix in suffixes:
            # 氯化钠, 碳酸钙: the metal is the drug itself there, not a salt of something.
            inorganic = suffixes is _SALT_SUFFIXES and name[: -len(suffix)].endswith(("化", "酸"))
            if name.endswith(suffix) and len(name) > len(suffix) + 1 and not inorganic:
                name = name[: -len(suffix)]
                variants.append(name)
                break
    return variants


def normalise_name(text: str) -> str:
    """How drug names are compared: NFKC, lower case, no spaces, hyphens or brackets."""
    return _NAME_STRIP.sub("", unicodedata.normalize("NFKC", text).lower())




# Around the name an HIS writes its decoration: a brand or version in brackets (立普妥, (Ⅱ)), the
# strength and pack (0.25g*24粒, 20mg), a concentration before fluids (0.9%氯化钠). Taken off in
# that order; digits that are part of a name (维生素B12, 5-氟尿嘧啶) have no unit after them and stay.
_BRACKETED = re.compile(r"[(\[【〔][^)\]】〕]*[)\]】〕]")
_MEASURE = r"(?:mg|g|ug|μg|mcg|ng|ml|l|iu|axaiu|u|万u|万iu|万单位|单位|meq|mmol|%|cm)"
# A pack count standing alone after a space (复方甘草片 100片, 六神丸 1000粒): a count inside a name
# (维生素B12片) has no space before it.
_PACK = re.compile(r"\s+\d+\s*" + r"(?:粒|片|袋|支|瓶|盒|揿|喷|吸|贴|丸|枚)(?:\s*/\s*[盒瓶袋])?\s*$")
# A manufacturer after the name (替米沙坦片-石药, 【扬子江】) and list markers (★, ●, 医保, 集采).
_MAKER = re.compile(r"(?:-[\u4e00-\u9fff]{1,8}|【[^】]*】)\s*$")
_MARKS = re.compile(r"^[\s★☆●○◆◇▲△■□※#＊*]+|[★☆●○◆◇▲△■□※]")
_COUNT = r"(?:粒|片|袋|支|瓶|盒|揿|喷|吸|贴|丸|枚|s|t)"
# A measure (20mg, 0.9%, 100ml) with an optional pack after it (*24粒, ×10支, /5ml); a count alone
# (维生素B12片) is part of a name.
_SPEC = re.compile(r"\d+(?:\.\d+)?\s*" + _MEASURE + r"(?![a-z])(?:\s*[/*×:：+]\s*\d*(?:\.\d+)?\s*(?:"
                   + _MEASURE + "|" + _COUNT + r")?)*", re.IGNORECASE)
# English order words around a US/UK drug name (MIMIC: "Metoprolol Tartrate 25 mg tab", "Acetaminophen IV").
_ORDER_WORDS = frozenset({
    "tab", "tabs", "tablet", "tablets", "cap", "caps", "capsule", "capsules", "inj", "injection", "iv", "ivpb", "po",
    "oral", "solution", "soln", "susp", "suspension", "syrup", "elixir", "liquid", "cream", "ointment", "oint", "gel",
    "drops", "drop", "ophth", "ophthalmic", "otic", "nasal", "spray", "patch", "er", "sr", "xl", "xr", "la", "cr",
    "ec", "dr", "odt", "chewable", "flush", "premix", "premixed", "neb", "nebulizer", "inhaler", "hfa", "pf",
    "vial", "bolus", "infusion", "drip", "sublingual", "sl", "topical", "rectal", "supp", "suppository", "dose",
    "adult", "pediatric", "concentrate", "replacement", "mini", "bag", "plus", "extended-release", "extended",
    "release", "delayed-release", "immediate-release", "ir", "jelly", "rinse", "mouthwash", "mdi", "diskus",
    "inhalation", "disintegrating", "viscous", "lozenge", "powder", "na", "succ",
    "nf", "liq", "syr", "respimat", "handihaler", "pen", "flexpen",
})
# CPOE annotations after the name: "Diazepam - CIWA protocol", "Insulin (Regular) for Hyperkalemia",
# "*NF* Ertapenem Sodium" (non-formulary marker).
_ANNOTATION = re.compile(r"\s+(?:-|–|for)\s+.*$", re.IGNORECASE)
_MARKER = re.compile(r"\*[^*]*\*")


# Shorthand HIS write: vitamins (VitC片, VB6, Vit K1针) and a few chemical formulas (10%KCl, NaHCO3).
_VITAMIN = re.compile(r"^(?:vit\.?\s*|v)(a|b1|b2|b6|b12|c|d2|d3|d|e|k1|k|pp)(?![a-z])", re.IGNORECASE)
_FORMULAS = {"kcl": "氯化钾", "nacl": "氯化钠", "nahco3": "碳酸氢钠", "cacl2": "氯化钙", "mgso4": "硫酸镁",
             "gns": "葡萄糖氯化钠", "gs": "葡萄糖", "ns": "氯化钠"}
_FORMULA = re.compile(r"(?<![a-z])(" + "|".join(sorted(_FORMULAS, key=len, reverse=True)) + r")(?![a-z0-9])",
                      re.IGNORECASE)
# Supply words no drug name contains: a name with one of them and no drug is a supply.
SUPPLY_WORDS = ("一次性使用", "留置针", "棉签", "口罩", "试纸", "输液贴", "敷贴", "纱布", "手套", "输液器")


def _shorthand(text: str) -> str:
    text = _VITAMIN.sub(lambda m: "维生素" + m.group(1).upper(), text.strip())
    return _FORMULA.sub(lambda m: _FORMULAS[m.group(1).lower()], text)


def candidates(text: str) -> list[str]:
    """Names to look up for what an HIS wrote, most literal first, each also without salt and form words."""
    plain = unicodedata.normalize("NFKC", text)
    steps = [plain]
    if (expanded := _shorthand(plain)) != plain:
        steps.append(expanded)
        plain = expanded
    plain = _MARKS.sub("", plain)
    steps.append(plain)
    no_brackets = _BRACKETED.sub(" ", _MARKER.sub(" ", plain))
    no_brackets = _MAKER.sub("", _PACK.sub("", no_brackets.strip()))
    steps.append(no_brackets)
    steps.append(_ANNOTATION.sub("", no_brackets))
    no_spec = _MAKER.sub("", _SPEC.sub(" ", no_brackets).strip())
    steps.append(no_spec)
    words = [word.strip(".") for word in re.split(r"[\s,;/]+", _ANNOTATION.sub("", no_spec).lower())
             if word.strip(".")]
    kept = [word for word in words if word not in _ORDER_WORDS and not word.replace(".", "").isdigit()]
    steps.append(" ".join(kept))
    found: list[str] = []
    for step in steps:
        for name in (normalise_name(step), *name_variants(step)):
            if name and name not in found:
                found.append(name)
    return found


# Allergy text as HIS write it: "青霉素(过敏性休克)", "阿莫西林皮试阳性", "对磺胺类药物过敏", "头孢类、
# 喹诺酮类过敏", "sulfa allergy". The allergen is what is left once the reaction (in brackets), the
# separators and the words around it are taken off; "无" / "否认药物过敏史" / "NKDA" say none.
_ALLERGY_SPLIT = re.compile(r"[、,，;；/|+]|\s+|和|及|与|以及")
_ALLERGY_PREFIXES = ("既往对", "既往", "曾对", "曾", "有", "对", "allergic to", "allergy to", "allergy:", "过敏原:",
                     "过敏原：", "过敏史:", "过敏史：")
_ALLERGY_SUFFIXES = tuple(sorted((
    "过敏史", "过敏反应", "过敏", "皮试阳性", "皮试(+)", "皮试+", "皮试阳", "阳性", "(+)", "类药物", "类药", "药物",
    "allergy", "allergies", "allergic", "intolerance",
), key=len, reverse=True))
NO_ALLERGY = frozenset({
    "无", "否认", "无过敏史", "否认过敏史", "否认药物过敏史", "无药物过敏史", "无已知过敏", "无已知药物过敏", "未发现",
    "nkda", "nka", "none", "no", "noknownallergies", "noknowndrugallergies", "-", "/",
})
# Allergens that are not drugs (food, environment): read, and nothing to check against a prescription.
NON_DRUG_ALLERGENS = frozenset({
    "海鲜", "鱼虾", "虾", "蟹", "鱼", "鸡蛋", "蛋类", "牛奶", "奶制品", "花粉", "尘螨", "螨虫", "芒果", "坚果", "花生",
    "乳胶", "橡胶", "酒精", "宠物", "猫毛", "狗毛", "seafood", "shellfish", "egg", "eggs", "milk", "peanut",
    "peanuts", "pollen", "latex", "dust",
})


# "(+)" / "(-)" anywhere, or a bare sign right after 皮试.
_TEST_RESULT = re.compile(r"\(\s*([+\-−])\s*\)|(?<=皮试)\s*([+\-−])")


def allergen_parts(text: str) -> list[str]:
    """The allergens named in one allergy entry, cleaned; ``[]`` when it says there is none."""
    plain = unicodedata.normalize("NFKC", text).lower().strip()
    if normalise_name(plain) in NO_ALLERGY:
        return []
    # A test result, before brackets and "+" are taken as decoration or separators: 青霉素皮试(+) is
    # an allergy, 青霉素皮试(-) is none.
    plain = _TEST_RESULT.sub(lambda m: "阳性" if (m.group(1) or m.group(2)) == "+" else "阴性", plain)
    parts = []
    for piece in _ALLERGY_SPLIT.split(_BRACKETED.sub(" ", plain)):
        piece = piece.strip(" :：.。")
        if piece.endswith("阴性"):
            continue  # a negative test names no allergen
        changed = True
        while changed and piece:
            changed = False
            for prefix in _ALLERGY_PREFIXES:
                if piece.startswith(prefix) and len(piece) > len(prefix):
                    piece, changed = piece[len(prefix) :].strip(), True
            for suffix in _ALLERGY_SUFFIXES:
                if piece.endswith(suffix) and len(piece) > len(suffix):
                    piece, changed = piece[: -len(suffix)].strip(), True
        if piece and normalise_name(piece) not in NO_ALLERGY and piece not in _ALLERGY_SUFFIXES:
            parts.append(piece)
    return parts


_VERSION = re.compile(r"[(（]\s*(?:Ⅰ|Ⅱ|Ⅲ|Ⅳ|I{1,3}|IV)\s*[)）]")


def bracket_names(text: str) -> list[str]:
    """The contents of brackets (brands, versions) as written: 阿托伐他汀钙片(立普妥) → [立普妥]."""
    plain = unicodedata.normalize("NFKC", text)
    return [match.group(0)[1:-1].strip() for match in _BRACKETED.finditer(plain)
            if match.group(0)[1:-1].strip() and not _VERSION.fullmatch(match.group(0))]


def _undecorated(text: str) -> str:
    """Without 规格, pack and maker, brackets kept: 口服补液盐散(Ⅲ) 5.125g*6袋 → 口服补液盐散(Ⅲ)."""
    return _MAKER.sub("", _SPEC.sub(" ", _PACK.sub("", unicodedata.normalize("NFKC", text))).strip())


def _one_bracket_kept(text: str) -> list[str]:
    """With two or more bracket groups, the name keeping each one alone: A(x)(y) → [A(x), A(y)]."""
    plain = unicodedata.normalize("NFKC", text)
    groups = list(_BRACKETED.finditer(plain))
    if len(groups) < 2:
        return []
    kept = []
    for keep in groups:
        pieces, at = [], 0
        for group in groups:
            pieces.append(plain[at:group.start()])
            if group is keep:
                pieces.append(group.group(0))
            at = group.end()
        pieces.append(plain[at:])
        kept.append("".join(pieces))
    return kept


def has_version(text: str) -> bool:
    """(Ⅱ), (II): a formulation the name alone does not identify for a combination product."""
    return bool(_VERSION.search(unicodedata.normalize("NFKC", text)) or _VERSION.search(text))


def resolve_name(text: str, names: dict[str, str], is_combination: Callable[[str], bool]) -> str | None:
    """The id a written name means, through ``names`` (normalised name → id); ``None`` when unknown or
    when its parts disagree — never a guess:

    * the name as written, then without its decoration (:func:`candidates`);
    * a brand in brackets must agree with the generic part (精蛋白人胰岛素注射液(诺和灵30R): NPH by the
      name, the 30R premix by the brand — neither is taken);
    * a version marker, (Ⅱ), never picks a combination product it does not name (复方对乙酰氨基酚片(Ⅱ)
      is another combination than 复方对乙酰氨基酚片) — unless the dictionary writes the name with
      that very marker (口服补液盐散(Ⅲ));
    * with two bracket groups, the name keeping one of them may be the dictionary's own
      (精蛋白生物合成人胰岛素注射液(预混30R)(诺和灵30R)).
    """
    # A name the dictionary writes with one of its brackets (精蛋白生物合成人胰岛素注射液(预混30R), beside
    # the brand (诺和灵30R)) is that name, before the brackets are dropped.
    kept = next((names[name] for option in _one_bracket_kept(text)
                 for name in (normalise_name(option), normalise_name(_undecorated(option))) if name in names), None)
    found = kept or next((names[name] for name in candidates(text) if name in names), None)
    brands = {names[name] for part in bracket_names(text) for name in candidates(part)[:2] if name in names}
    if len(brands) > 1 or (brands and found is not None and found not in brands):
        return None
    if brands:
        return next(iter(brands))
    # The version written as the dictionary writes it (口服补液盐散(Ⅲ)) names that product.
    plain = unicodedata.normalize("NFKC", text)
    literal = {names.get(normalise_name(plain)), names.get(normalise_name(_undecorated(plain)))}
    if found is not None and has_version(text) and is_combination(found) and found not in literal:
        return None
    if found is None and any(word in text for word in SUPPLY_WORDS):
        return names.get(normalise_name("医用耗材"))
    return found
