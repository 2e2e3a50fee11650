"""Loading rule files: what a pharmacist who makes a mistake is told, and where."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from rx_audit.errors import RulebookError, RulebookErrors
from rx_audit.rulebook import load_rulebook, rulebook_hash

MINIMAL_DRUG = textwrap.dedent(
    """\
    drug:
      id: testdrug
      name: 测试药
      names: [testdrug]
      unit: mg
      forms:
        oral_solid: [po]
      source: 测试说明书
    indication:
      codes: [E11]
      source: 测试说明书【适应症】
    dose:
      - id: adult
        when: {age_min: 18}
        per_dose: {max: 100}
        per_day: {max: 300}
        frequencies: [qd, bid, tid]
        source: 测试说明书【用法用量】
    """
)


@pytest.fixture()
def book(tmp_path: Path, rules_dir: Path) -> Path:
    """A small rulebook: the shipped vocabularies and one test drug."""
    root = tmp_path / "rules"
    (root / "drugs").mkdir(parents=True)
    for name in ("rulebook.yaml", "classes.yaml", "allergy_classes.yaml"):
        shutil.copy(rules_dir / name, root / name)
    (root / "drugs" / "testdrug.yaml").write_text(MINIMAL_DRUG, encoding="utf-8")
    return root


def _errors(root: Path) -> list[RulebookError]:
    with pytest.raises(RulebookErrors) as caught:
        load_rulebook(root)
    return caught.value.errors


def test_minimal_rulebook_loads(book):
    rulebook = load_rulebook(book)
    assert set(rulebook.drugs) == {"testdrug"}
    assert {rule.id for rule in rulebook.rules.values()} >= {
        "testdrug.indication", "testdrug.dose.adult.per_dose", "testdrug.dose.adult.per_day",
        "testdrug.dose.adult.frequency", "testdrug.route.form", "testdrug.route.oral_solid", "testdrug.allergy",
    }


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        # a misspelt key is not ignored: it is an error on its own line
        ("    per_day: {max: 300}", "    per_dai: {max: 300}", 16, "per_dai"),
        # a frequency the engine does not know
        ("frequencies: [qd, bid, tid]", "frequencies: [qd, bid, thrice]", 17, "thrice"),
        # an ICD-10 code that does not exist
        ("codes: [E11]", "codes: [E11, ZZ9]", 10, "ZZ9"),
        # a route that does not exist
        ("oral_solid: [po]", "oral_solid: [po, mouth]", 7, "mouth"),
        # a limit below zero
        ("per_dose: {max: 100}", "per_dose: {max: -1}", 15, "greater than 0"),
        # a source is required on every rule
        ("    source: 测试说明书【用法用量】\n", "", 13, "source"),
    ],
)
def test_errors_name_file_and_line(book, old, new, line, words):
    path = book / "drugs" / "testdrug.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    errors = _errors(book)
    assert any(
        error.path and error.path.endswith("drugs/testdrug.yaml") and error.line == line and words in error.message
        for error in errors
    ), [str(e) for e in errors]


def test_yaml_syntax_error_has_line(book):
    path = book / "drugs" / "testdrug.yaml"
    path.write_text(MINIMAL_DRUG + "examples: [\n  - broken: {\n", encoding="utf-8")
    errors = _errors(book)
    assert errors[0].path.endswith("testdrug.yaml") and errors[0].line is not None and "YAML" in errors[0].message


def test_python_tags_are_refused(book):
    """safe loading: a rule file cannot run code."""
    (book / "evil.yaml").write_text("classes: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    errors = _errors(book)
    assert any(error.path.endswith("evil.yaml") for error in errors)


def test_unknown_class_and_duplicate_drug_are_errors(book):
    path = book / "drugs" / "testdrug.yaml"
    path.write_text(MINIMAL_DRUG.replace("  unit: mg", "  classes: [no_such_class]\n  unit: mg"), encoding="utf-8")
    shutil.copy(path, book / "drugs" / "copy.yaml")
    messages = [str(error) for error in _errors(book)]
    assert any("no_such_class" in message for message in messages)
    assert any("defined twice" in message for message in messages)


def test_unknown_placeholder_in_message_is_an_error(book):
    path = book / "drugs" / "testdrug.yaml"
    path.write_text(MINIMAL_DRUG.replace("  source: 测试说明书【适应症】",
                                         "  message: 无{drug}适应证{nonsense}\n  source: 测试说明书【适应症】"),
                    encoding="utf-8")
    assert any("nonsense" in str(error) for error in _errors(book))


def test_every_error_is_reported_in_one_pass(book):
    path = book / "drugs" / "testdrug.yaml"
    path.write_text(MINIMAL_DRUG.replace("per_dose:", "per_dos:").replace("codes: [E11]", "codes: [ZZ9]"),
                    encoding="utf-8")
    (book / "interactions.yaml").write_text(
        "interactions:\n  - id: x\n    between: [{drug: nope}, {drug: testdrug}]\n    severity: warning\n"
        "    message: m\n    source: s1\n", encoding="utf-8")
    errors = _errors(book)
    assert len({(e.path, e.line) for e in errors}) >= 2


def test_hash_changes_with_any_rule_file(book):
    before = rulebook_hash(book)
    path = book / "drugs" / "testdrug.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("max: 300", "max: 301"), encoding="utf-8")
    assert rulebook_hash(book) != before


def test_indication_exclusions_are_folded_into_codes(book):
    """`exclude` removes a sub-code: E11.1 excluded, E11.9 and a bare E11 still indicated."""
    from rx_audit.engine import Auditor

    path = book / "drugs" / "testdrug.yaml"
    path.write_text(MINIMAL_DRUG.replace("codes: [E11]", "codes: [E11]\n  exclude: [E11.1]"), encoding="utf-8")
    auditor = Auditor(load_rulebook(book))

    def indicated(code: str) -> bool:
        result = auditor.audit({"id": "X", "patient": {"age_years": 40, "sex": "M"}, "diagnoses": [code],
                                "items": [{"drug": "testdrug", "dose": {"value": 10, "unit": "mg"},
                                           "frequency": "qd", "route": "po", "days": 3, "form": "片"}]})
        return "testdrug.indication" not in {f.rule for f in result.findings}

    assert indicated("E11.900") and indicated("E11") and not indicated("E11.101") and not indicated("J06.9")


def test_shipped_rulebook_loads_and_covers_the_fifty_drugs(rules_dir):
    """DRUGS.md lists the starter drugs; each has a monograph with a source on every rule."""
    rulebook = load_rulebook(rules_dir)
    drugs_md = Path(__file__).resolve().parents[2] / "shared" / "DRUGS.md"
    if drugs_md.exists():
        listed = [line.split("|")[1].strip() for line in drugs_md.read_text(encoding="utf-8").splitlines()
                  if line.startswith("| ") and not line.startswith("| generic") and "---" not in line]
        missing = [name for name in listed if rulebook.drug_for(name) is None]
        assert not missing, f"DRUGS.md drugs without a monograph: {missing}"
    assert all(rule.source and (rule.reference or rule.id.startswith(("completeness", "duplicate.same")))
               for rule in rulebook.rules.values() if rule.missing_field is None)


@pytest.mark.parametrize(
    ("written", "drug"),
    [
        ("盐酸二甲双胍缓释片", "metformin"),  # salt and release form around the generic name
        ("苯磺酸氨氯地平片", "amlodipine"),
        ("注射用头孢呋辛钠", "cefuroxime"),
        ("Metformin Hydrochloride Tablets", "metformin"),
        # A combination is itself (the dictionary entry with its ingredients), never one of them.
        ("氨氯地平贝那普利片", "amlodipine_benazepril"),
        ("复方甘草片", "compound_liquorice"),
        ("某某未收录药片", None),
    ],
)
def test_drug_names_as_his_write_them(rules_dir, written, drug):
    found = load_rulebook(rules_dir).drug_for(written)
    assert (found.id if found else None) == drug


def _rule_table(root: Path) -> list[tuple[str, str, str, str]]:
    loaded = load_rulebook(root)
    return sorted((rule.id, rule.source, rule.message, repr(rule.condition)) for rule in loaded.rules.values())


def test_parse_cache_loads_the_same_rulebook_and_sees_every_edit(book, tmp_path, monkeypatch):
    """A warm load (each file's parse kept under the hash of its bytes) compiles exactly what a
    cold load compiles; an edited file is parsed afresh; a damaged cache entry is only a miss."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RX_AUDIT_CACHE_DIR", "off")
    cold = _rule_table(book)
    monkeypatch.setenv("RX_AUDIT_CACHE_DIR", str(cache))
    assert _rule_table(book) == cold  # filling the cache
    entries = sorted((cache / "yaml").iterdir())
    assert entries
    assert _rule_table(book) == cold  # from the cache
    for entry in entries:
        entry.write_bytes(b"{not json")
    assert _rule_table(book) == cold  # damaged entries: parsed again
    drug = book / "drugs" / "testdrug.yaml"
    drug.write_text(drug.read_text(encoding="utf-8").replace("per_dose: {max: 100}", "per_dose: {max: 200}"),
                    encoding="utf-8")
    edited = _rule_table(book)
    assert edited != cold
    monkeypatch.setenv("RX_AUDIT_CACHE_DIR", "off")
    assert _rule_table(book) == edited


def test_parse_cache_off_writes_nothing(book, tmp_path, monkeypatch):
    """RX_AUDIT_CACHE_DIR=off: a read-only deployment loads without writing anywhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RX_AUDIT_CACHE_DIR", "off")
    load_rulebook(book)
    assert not (tmp_path / "home").exists() and not (tmp_path / "xdg").exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_the_garbage_collector_as_the_host_had_it(book, enabled):
    """Compiling pauses the cyclic collector (rulebook.gc_pause); an HIS that imports the library
    gets it back as it was — on, or off if it had turned it off — after a load that succeeds, and
    after one that fails."""
    import gc

    broken = book.parent / "broken"
    shutil.copytree(book, broken)
    (broken / "drugs" / "testdrug.yaml").write_text("drug: [unclosed\n", encoding="utf-8")
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        load_rulebook(book)
        assert gc.isenabled() is enabled
        with pytest.raises(RulebookError):
            load_rulebook(broken)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
