"""The UI as a client of the library: it talks to rx_audit only through the package, shows the
library's words (severities, categories, statuses, rule messages), browses the rulebook through its
public views, checks a rulebook with ``check_rulebook`` and says what to do with an unmigrated
database. (The import rule itself is an import-linter contract in pyproject.toml.)"""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest

from review_ui import rulebook_check, ui
from review_ui.config import ConfigError, load_settings
from tests.review_ui.helpers import ROOT, RULES
from tests.review_ui.test_pages import no_exception

UI_ROOT = ROOT / "review_ui"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_review_ui_is_a_package_without_path_hacks() -> None:
    for path in UI_ROOT.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "sys.path" not in source, path
    assert (UI_ROOT / "__init__.py").is_file() and (UI_ROOT / "views" / "__init__.py").is_file()


# The statistics files are being replaced by the queue's typed statistics API (another change).
_STATISTICS_FILES = {"stats_extra.py", "statistics.py"}


def test_review_ui_imports_the_rx_audit_package_only() -> None:
    deep = [
        f"{path.relative_to(ROOT)}:{line} {module}"
        for path in UI_ROOT.rglob("*.py")
        if path.name not in _STATISTICS_FILES
        for line, module in _imports(path)
        if module.startswith("rx_audit.")
    ]
    assert not deep, deep


def test_labels_are_the_librarys() -> None:
    from rx_audit import READY_STATUSES, STATUSES, Category, Severity

    assert ui.SEVERITIES == ("critical", "warning", "info")
    assert [ui.severity_rank(s) for s in ui.SEVERITIES] == [Severity(s).rank for s in ui.SEVERITIES]
    # Plain words (tables, options): no emoji, which are boxes on a PC without an emoji font.
    assert ui.severity_label("critical") == f"{Severity.critical.label_zh} critical"
    assert ui.severity_label(Severity.warning) == f"{Severity.warning.label_zh} warning"
    assert ui.severity_label(None) == "—" and ui.severity_rank(None) == 0 and ui.severity_rank("bogus") == 0
    assert ui.worst_severity(["info", None, "critical", "warning"]) == "critical"
    assert ui.worst_severity([None]) is None
    assert ui.at_least("warning") == ["critical", "warning"]
    assert tuple(c.value for c in Category) == ui.CATEGORIES
    assert ui.category_label("dose") == f"{Category.dose.label_zh} dose"
    assert set(ui.READY) == set(READY_STATUSES)
    assert set(ui.READY) | set(ui.NOT_READY) == set(STATUSES)
    assert set(STATUSES) <= set(ui.STATUS_LABELS)  # every status the queue knows has a label
    assert set(ui.VERDICTS) <= set(ui.STATUS_LABELS)


def test_one_database_setting(tmp_path: Path) -> None:
    url = "sqlite:///one.db"
    assert load_settings({"RX_AUDIT_DB_URL": url, "RX_AUDIT_DB": url}, cwd=tmp_path).db_url == url
    assert load_settings({"RX_AUDIT_DB": url}, cwd=tmp_path).sources["db_url"] == "env RX_AUDIT_DB"
    with pytest.raises(ConfigError, match="RX_AUDIT_DB_URL") as raised:
        load_settings(
            {"RX_AUDIT_DB_URL": "postgresql+psycopg://rx:secret@db/a", "RX_AUDIT_DB": "sqlite:///b.db"}, cwd=tmp_path
        )
    assert "secret" not in str(raised.value)


def test_unmigrated_database_says_to_migrate(app, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    if db_url.startswith("sqlite"):
        empty = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    else:  # a schema that does not exist: no version table, like a database nobody migrated
        base, _, _ = db_url.partition("options=")
        empty = f"{base}options=-csearch_path%3Dnot_migrated_{uuid.uuid4().hex[:8]}"
    at = app("yao01")
    monkeypatch.setenv("RX_AUDIT_DB_URL", empty)
    at.run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert any("rx-audit queue migrate" in e.replace("\\", "") for e in errors), errors
    assert not any("无法连接" in e for e in errors), errors  # not the generic "cannot open"
    from review_ui import backend

    backend._queue.clear()


def _shown_rules(at) -> list[str]:
    return list(at.dataframe[0].value["规则 rule"])


def test_rulebook_search_finds_every_rule_of_a_drug_by_any_name(app, queue) -> None:
    from review_ui import backend
    from rx_audit import rule_infos

    every = rule_infos(backend._auditor(str(RULES)).rulebook)
    metformin = {r.id for r in every if r.drug_id == "metformin"}
    assert "metformin.contra.egfr_lt_30" in metformin
    at = app("yao01").run()
    at.switch_page("views/rulebook.py").run()
    no_exception(at)
    assert len(_shown_rules(at)) == len(every)
    for query in ("二甲双胍", "metformin", "A10BA02", "egfr_lt_30"):
        at.text_input(key="rb_text").input(query).run()
        no_exception(at)
        shown = set(_shown_rules(at))
        assert "metformin.contra.egfr_lt_30" in shown, query
        if query != "egfr_lt_30":
            assert metformin <= shown, (query, metformin - shown)
    at.text_input(key="rb_text").input("二甲双胍").run()
    frame = at.dataframe[0].value
    row = frame[frame["规则 rule"] == "metformin.contra.egfr_lt_30"].iloc[0]
    assert "二甲双胍" in row["提示 message"] and "{drug}" not in row["提示 message"]
    assert row["药品 drug"] == "二甲双胍"
    assert not frame["提示 message"].str.contains("{drug}", regex=False).any()


def test_rulebook_drugs_tell_monographs_from_dictionary_entries(app, queue) -> None:
    at = app("yao01").run()
    at.switch_page("views/rulebook.py").run()
    drugs = at.dataframe[1].value
    kinds = set(drugs["规则 rules"])
    assert kinds == {"专论 monograph", "仅词典 dictionary only"}
    assert len(drugs) > 1000  # the drug dictionary is in the rulebook
    assert drugs.loc[drugs["id"] == "metformin", "规则 rules"].iloc[0] == "专论 monograph"
    at.text_input(key="rb_drug_text").input("A10BA02").run()
    no_exception(at)
    assert "metformin" in set(at.dataframe[1].value["id"])
    at.segmented_control(key="rb_drug_kind").set_value("仅词典 dictionary only").run()
    no_exception(at)
    assert "metformin" not in set(at.dataframe[1].value["id"])


def test_rulebook_check_reports_what_check_rulebook_found(tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(RULES, broken)
    (broken / "drugs" / "metformin.yaml").write_text("drug: [unclosed\n", encoding="utf-8")
    report = rulebook_check.check(str(broken), timeout=300)
    assert not report.ok and not report.timed_out and report.result is not None
    assert report.result.errors and any("metformin.yaml" in e for e in report.result.errors)
    assert report.runs[0].returncode == 1 and "metformin.yaml" in report.runs[0].output
    assert report.hash is None
