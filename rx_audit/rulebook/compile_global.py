"""Rules over the prescription as a whole: completeness (处方管理办法), days of supply by visit
type, text that was not what it seemed, and the hospital's custom rules.
"""

from __future__ import annotations

from pathlib import Path

from rx_audit.rulebook.compiler import ITEM_PLACEHOLDERS, Compiler
from rx_audit.rulebook.conditions import Gate, absent, all_of, cmp, custom_condition, eq, none_of, one_of
from rx_audit.rulebook.model import CompiledRule
from rx_audit.rulebook.schema import CUSTOM_ITEM_FIELDS, CUSTOM_PRESCRIPTION_FIELDS, CustomRule, Settings, SeverityName


def compile_global_rules(
    compiler: Compiler, settings: Settings, settings_path: Path, custom: list[tuple[Path, CustomRule]]
) -> None:
    where = compiler.where(settings_path, settings.line or 1)
    _prescription_completeness(compiler, settings, where)
    _item_completeness(compiler, settings, where)
    _durations(compiler, settings, settings_path)
    if settings.privileges is not None:
        _legality_rules(compiler, settings, settings_path)
    if settings.quantity is not None:
        _quantity_rules(compiler, settings, settings_path)
    _formulary_rule(compiler, settings, where)
    _custom_rules(compiler, custom)


def _prescription_completeness(compiler: Compiler, settings: Settings, where: str) -> None:
    # Prescription-level completeness (处方管理办法 第五条/附件: 处方前记须有年龄、性别、临床诊断).
    regulation = "处方管理办法（卫生部令第53号）第六条、附件1 处方标准：处方前记包括患者性别、年龄、临床诊断"
    for missing, message in (
        ("age", "处方缺少患者年龄（或出生日期）：年龄相关的剂量与禁忌均无法核查"),
        ("sex", "处方缺少患者性别：性别与妊娠相关规则无法核查"),
    ):
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.missing.{missing}", category="completeness", severity="warning",
                message=message, source=where, condition=all_of(eq("t", "rx"), absent(missing)),
                reference=regulation, scope="prescription",
            ),
        )
    compiler.add(
        "global",
        CompiledRule(
            id="completeness.missing.diagnosis", category="completeness", severity="warning",
            message="处方无临床诊断：适应证无法审核", source=where,
            condition=all_of(eq("t", "rx"), eq("dx_count", 0)), reference=regulation, scope="prescription",
        ),
    )
    compiler.add(
        "global",
        CompiledRule(
            id="completeness.allergy_unreadable", category="completeness",
            severity=settings.unreadable_allergy_severity,
            message="过敏史“{allergy_unread_text}”未能识别为药品或药物类别：相关过敏禁忌未能自动核查，"
                    "请药师人工核对",
            source=where, condition=all_of(eq("t", "rx"), eq("allergy_unread", 1)),
            evidence_fields=("allergy_unread_text",),
            reference="CONTRACT §1 patient.allergies: 无法识别的过敏史是规范性问题，不得忽略; "
                      "医疗机构处方审核规范 第十五条",
            scope="prescription",
        ),
    )
    if settings.missing_allergy_info:
        compiler.add(
            "global",
            CompiledRule(
                id="completeness.missing.allergies", category="completeness", severity="info",
                message="未记录过敏史（无过敏请写空列表）：过敏禁忌无法核查", source=where,
                condition=all_of(eq("t", "rx"), eq("allergies_recorded", 0)),
                reference="医疗机构处方审核规范（2018）第十五条：审核过敏史", scope="prescription",
            ),
        )



def _item_completeness(compiler: Compiler, settings: Settings, where: str) -> None:
    # Item-level completeness, written on the prescription itself (处方书写规则).
    writing = "处方管理办法 第六条：药品用法用量应当按照药品说明书规定的常规用法用量书写"
    # CONTRACT §1: an unknown drug is reviewed by hand; its severity is policy, per facility.
    overrides = settings.unknown_drug_severity_by_facility
    variants: list[tuple[SeverityName, list[str], bool]] = [(settings.unknown_drug_severity, sorted(overrides), False)]
    for severity in sorted(set(overrides.values())):
        variants.append((severity, sorted(f for f, s in overrides.items() if s == severity), True))
    for severity, facilities, inside in variants:
        scope_test = ([one_of("facility", facilities)] if inside else
                      [{"$or": [none_of("facility", facilities), absent("facility")]}] if facilities else [])
        compiler.add(
            "global",
            CompiledRule(
                id="completeness.unknown_drug", category="completeness", severity=severity,
                message="规则库未收录药品“{drug_text}”：未做任何审核，请药师人工审核", source=where,
                condition=all_of(eq("t", "item"), eq("known", 0), *scope_test), evidence_fields=("drug_text",),
                reference="医疗机构处方审核规范（2018）第七条：信息系统不能审核的部分由药师人工审核; CONTRACT §1",
                scope="item",
            ),
            variant=True,
        )
    compiler.add(
        "global",
        CompiledRule(
            id="completeness.no_monograph", category="completeness", severity=settings.no_monograph_severity,
            message="{drug}：规则库暂无该药的用法用量规则，剂量与适应证未审核（过敏、重复用药、相互作用已按药物类别审核）",
            source=where,
            condition=all_of(eq("t", "item"), eq("known", 1), eq("monograph", 0),
                             none_of("kind", ["fluid", "supply"])),
            evidence_fields=("drug_text",),
            reference="医疗机构处方审核规范（2018）第七条：信息系统不能审核的部分由药师人工审核",
            scope="item",
        ),
    )
    # Text that mixed Latin with look-alike letters was folded and audited; the pharmacist sees it.
    unicode_source = "Unicode TR39 混淆字符 (confusables); rx_audit: 文字须与药师所见一致"
    for kind, scope, message in (
        ("item", "item",
         "药品“{drug_text}”的文字混有形近外文字母（如西里尔字母），已按拉丁字母识别，请核对：{text_fields}"),
        ("rx", "prescription", "处方文字混有形近外文字母（如西里尔字母），已按拉丁字母识别，请核对：{text_fields}"),
    ):
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.mixed_script{'' if kind == 'item' else '_prescription'}", category="completeness",
                severity="warning", message=message, source=where,
                condition=all_of(eq("t", kind), eq("text_mixed", 1)),
                evidence_fields=("drug_text", "text_fields") if kind == "item" else ("text_fields",),
                reference=unicode_source, scope=scope,  # type: ignore[arg-type]
            ),
        )
    for raw_field, label_zh in (("has_dose", "剂量"), ("has_freq", "用药频次"), ("has_route", "给药途径"),
                                ("has_days", "用药天数")):
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.missing.{raw_field.removeprefix('has_')}", category="completeness",
                severity="warning", message=f"药品{{drug_text}}未写{label_zh}", source=where,
                # An inpatient order (医嘱) has no days of supply: not a 规范性 problem there.
                condition=all_of(eq("t", "item"), eq(raw_field, 0),
                                 *([cmp("$neq", "visit", "inpatient")] if raw_field == "has_days" else [])),
                evidence_fields=("drug_text",), reference=writing, scope="item",
            ),
        )
    for unusable, label_zh, raw_field in (("dose", "剂量单位无法换算（缺少规格或单位不识别）", "has_dose"),
                                          ("freq", "无法识别的用药频次", "has_freq"),
                                          ("route", "无法识别的给药途径", "has_route"),
                                          ("form", "无法识别的剂型", "has_form")):
        fact_field = "form_group" if unusable == "form" else unusable
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.unusable.{unusable}", category="completeness", severity="warning",
                message=f"药品{{drug_text}}：{label_zh}：{{raw_{unusable}}}", source=where,
                # A dose is converted only for a drug with a monograph (its unit); the others say so once.
                condition=all_of(eq("t", "item"), eq("known", 1), eq(raw_field, 1), absent(fact_field),
                                 *([eq("monograph", 1), eq("sys", 1)] if unusable == "dose" else [])),
                evidence_fields=("drug_text", f"raw_{unusable}"), reference=writing, scope="item",
            ),
        )
    compiler.add(
        "global",
        CompiledRule(
            id="duplicate.same_ingredient", category="duplicate", severity="warning",
            message="同一药品{a}重复开具", source=where,
            condition=all_of(eq("t", "pair"), eq("key", ""), eq("same", 1)), evidence_fields=("a_drug", "b_drug"),
            reference="医疗机构处方审核规范（2018）第十五条：是否有重复给药", scope="pair",
        ),
    )



def _durations(compiler: Compiler, settings: Settings, settings_path: Path) -> None:
    # Days of supply by visit type.
    for visit, limit in settings.duration.items():
        line = settings.line_of("duration")
        source = compiler.where(settings_path, limit.line or line)
        chronic_max = limit.chronic_drug_max_days
        compiler.add(
            "global",
            CompiledRule(
                id=f"duration.{visit}", category="duration", severity=limit.severity,
                message=f"{{drug}}处方天数 {{days}} 天超过{_VISIT_ZH[visit]}限制 {{limit}} 天", source=source,
                condition=all_of(eq("t", "item"), eq("known", 1), cmp("$neq", "kind", "supply"), eq("visit", visit),
                               *([eq("chronic", 0)] if chronic_max else []), cmp("$gt", "days", limit.max_days)),
                evidence_fields=("days", "visit"), limits={"limit": limit.max_days}, reference=limit.source,
            ),
        )
        if chronic_max:
            compiler.add(
                "global",
                CompiledRule(
                    id=f"duration.{visit}_chronic_drug", category="duration", severity=limit.severity,
                    message=f"慢性病用药{{drug}}处方天数 {{days}} 天超过{_VISIT_ZH[visit]}限制 {{limit}} 天",
                    source=source,
                    condition=all_of(eq("t", "item"), eq("known", 1), cmp("$neq", "kind", "supply"),
                                     eq("visit", visit), eq("chronic", 1), cmp("$gt", "days", chronic_max)),
                    evidence_fields=("days", "visit"), limits={"limit": chronic_max}, reference=limit.source,
                ),
            )



def _formulary_rule(compiler: Compiler, settings: Settings, where: str) -> None:
    compiler.add("global", CompiledRule(
        id="formulary.outside", category="formulary", severity=settings.formulary_severity,
        message="{drug}不在本机构药品目录内（目录外用药）", source=where,
        condition=all_of(eq("t", "item"), eq("known", 1), eq("has_formulary", 1),
                         {"$iall": {"formularies": {"$neq": {"$i": {"$m": "facility"}}}}}),
        evidence_fields=("facility",),
        reference="县域医共体药品目录“六统一”; 医疗机构药事管理规定 第十七条：医疗机构应当制定本机构药品处方集"
                  "和基本用药供应目录",
        scope="item",
    ))



def _custom_rules(compiler: Compiler, custom: list[tuple[Path, CustomRule]]) -> None:
    # Hospital custom rules.
    for path, spec in custom:
        compiler.check_message(spec.message, ITEM_PLACEHOLDERS | CUSTOM_PRESCRIPTION_FIELDS | CUSTOM_ITEM_FIELDS,
                               path, spec.line)
        kind = "item" if spec.scope == "item" else "rx"
        # A custom rule on optional data (weight < 40, critical) gets missing-data twins like a
        # monograph rule: without weight it says it could not check, instead of staying silent.
        gate = Gate({"t": [eq("t", kind)]})
        for condition in spec.when:
            gate.add(condition.field, custom_condition(condition))
        compiler.add_with_twins(
            "global",
            CompiledRule(
                id=f"custom.{spec.id}", category=spec.category, severity=spec.severity, message=spec.message,
                source=compiler.where(path, spec.line), condition={},
                evidence_fields=tuple(dict.fromkeys(c.field for c in spec.when)),
                reference=spec.source, scope="item" if spec.scope == "item" else "prescription",
                drug=f"custom.{spec.id}",
            ),
            gate,
            {},
        )


_VISIT_ZH = {"outpatient": "门诊", "emergency": "急诊", "inpatient": "住院", "chronic": "长期处方"}


def _legality_rules(compiler: Compiler, settings: Settings, settings_path: Path) -> None:
    """合法性 (CONTRACT category legality): the antibacterial tier against the prescriber's title and
    granted rights; 麻醉药品 and 第一类精神药品 only with the right to prescribe them."""
    policy = settings.privileges
    assert policy is not None
    source = compiler.where(settings_path, policy.line)
    item = [eq("t", "item"), eq("known", 1)]
    compiler.add("global", CompiledRule(
        id="legality.antibacterial_tier", category="legality", severity=policy.antibacterial_severity,
        message="{drug}为{tier}抗菌药物，处方医师（{title_text}）无该级处方权；紧急情况越级使用限1日用量并须补办手续",
        # Both present: durable compares a missing field as null, and 1 > null holds.
        source=source, condition=all_of(*item, {"$ex": {"tier_allowed": 1}}, {"$ex": {"tier_rank": 1}},
                                        {"$gt": {"tier_rank": {"$m": "tier_allowed"}}}),
        evidence_fields=("tier", "title_text"), reference=policy.source, scope="item",
    ))
    compiler.add("global", CompiledRule(
        id="legality.missing.title", category="completeness", severity="info",
        message="处方未写医师职称或处方权：{drug}（{tier}）的分级处方权无法核查",
        source=source, condition=all_of(*item, cmp("$gt", "tier_rank", 1), absent("tier_allowed")),
        evidence_fields=("tier",), reference=policy.source, scope="item",
    ))
    for control, right, label in (("narcotic", "narcotic", "麻醉药品"), ("psychotropic_1", "psychotropic_1",
                                                                         "第一类精神药品")):
        compiler.add("global", CompiledRule(
            id=f"legality.{control}", category="legality", severity=policy.controlled_severity,
            message=f"{{drug}}为{label}，处方医师无{label}处方资格",
            source=source, condition=all_of(*item, {"$iany": {"controls": {"$i": control}}},
                                            eq("privileges_recorded", 1),
                                            {"$iall": {"privileges": {"$neq": {"$i": right}}}}),
            evidence_fields=("title_text",), reference="处方管理办法（卫生部令第53号）第十一条：医师取得麻醉药品和"
                                                       "第一类精神药品处方权后，方可开具; " + policy.source,
            scope="item",
        ))
        compiler.add("global", CompiledRule(
            id=f"legality.missing.{control}", category="completeness", severity="info",
            message=f"处方未写医师处方资格：{{drug}}为{label}，{label}处方资格无法核查",
            source=source, condition=all_of(*item, {"$iany": {"controls": {"$i": control}}},
                                            eq("privileges_recorded", 0)),
            reference="处方管理办法（卫生部令第53号）第十一条", scope="item",
        ))


def _quantity_rules(compiler: Compiler, settings: Settings, settings_path: Path) -> None:
    """处方用量 (处方管理办法 第十九条): the quantity dispensed, in days at the written dose, against the
    days written and against the limit by visit type."""
    policy = settings.quantity
    assert policy is not None
    source = compiler.where(settings_path, policy.line)
    item = [eq("t", "item"), eq("known", 1), cmp("$neq", "kind", "supply")]
    compiler.add("global", CompiledRule(
        id="duration.quantity_vs_days", category="duration", severity="warning",
        message="{drug}开具数量可用 {supply_days} 天，超出处方用药天数 {days} 天所需",
        source=source, condition=all_of(*item, {"$ex": {"supply_days": 1}}, {"$ex": {"days_tolerated": 1}},
                                        {"$gt": {"supply_days": {"$m": "days_tolerated"}}}),
        evidence_fields=("supply_days", "days"), reference=policy.source, scope="item",
    ))
    compiler.add("global", CompiledRule(
        id="duration.quantity_unusable", category="completeness", severity="info",
        message="{drug}的开具数量单位与剂量单位无法换算（如按盒开具）：用量天数未核算",
        source=source, condition=all_of(*item, eq("qty_unusable", 1)),
        reference=policy.source, scope="item",
    ))
    for visit, limit in settings.duration.items():
        chronic_max = limit.chronic_drug_max_days
        for chronic, maximum in ((0, limit.max_days), (1, chronic_max or limit.max_days)):
            if chronic_max is None and chronic == 1:
                continue
            compiler.add("global", CompiledRule(
                id=f"duration.quantity.{visit}{'_chronic_drug' if chronic else ''}", category="duration",
                severity=limit.severity,
                message=f"{{drug}}开具数量可用 {{supply_days}} 天，超过{_VISIT_ZH[visit]}处方用量限制 {{limit}} 天",
                source=source,
                # Only what the days check cannot see: days within the limit (or not written).
                condition=all_of(*item, eq("visit", visit), *([eq("chronic", chronic)] if chronic_max else []),
                                 cmp("$gt", "supply_days", maximum),
                                 {"$or": [absent("days"), cmp("$lte", "days", maximum)]}),
                evidence_fields=("supply_days",), limits={"limit": maximum}, reference=limit.source, scope="item",
            ))
