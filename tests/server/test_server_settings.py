"""Settings (defaults ← TOML ← environment ← options) and the keys file: what is refused, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rx_audit.server.auth import KeyRing, KeysFileError, RateLimiter, hash_key, key_entry, new_key
from rx_audit.server.settings import Settings, SettingsError


def test_settings_come_from_toml_then_environment_then_options(tmp_path: Path, monkeypatch):
    config = tmp_path / "server.toml"
    config.write_text('rules = "/srv/rules"\ndb_url = "sqlite:///a.db"\nmax_body_bytes = 2000\n', encoding="utf-8")
    for name in ("RX_AUDIT_RULES", "RX_AUDIT_DB_URL", "RX_AUDIT_KEYS", "RX_AUDIT_MAX_BODY_BYTES",
                 "RX_AUDIT_RATE_PER_MINUTE", "RX_AUDIT_RATE_BURST", "RX_AUDIT_MAX_WAIT_SECONDS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RX_AUDIT_DB_URL", "sqlite:///b.db")
    monkeypatch.setenv("RX_AUDIT_RATE_PER_MINUTE", "30")
    settings = Settings.load(config, max_body_bytes=None, keys_file="/etc/rx/keys.toml")
    assert settings.rules == Path("/srv/rules") and settings.db_url == "sqlite:///b.db"
    assert settings.max_body_bytes == 2000 and settings.rate_per_minute == 30.0 and settings.burst == 30
    assert settings.keys_file == Path("/etc/rx/keys.toml") and settings.max_wait_seconds == 25.0
    with pytest.raises(SettingsError, match="max_body_bytes"):
        Settings.load(config, max_body_bytes="many")
    with pytest.raises(SettingsError, match="positive"):
        Settings.load(config, rate_per_minute=0)
    config.write_text("colour = 1\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="colour"):
        Settings.load(config)
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no \\[\\[key\\]\\]"),
        ("[[key]]\nsha256 = 'x'\n", "id missing"),
        ("[[key]]\nid = 'a'\nsha256 = 'abc'\nfacilities = ['LZH']\n", "64 hex"),
        (f"[[key]]\nid = 'a'\nsha256 = '{'0' * 64}'\nfacilities = []\n", "facilities"),
        (f"[[key]]\nid = 'a'\nsha256 = '{'0' * 64}'\nfacilities = ['A']\n" * 2, "share an id"),
        ("[[key]\n", "cannot read"),
    ],
)
def test_bad_keys_files_are_refused(tmp_path: Path, text: str, message: str):
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KeysFileError, match=message):
        KeyRing.load(path)


def test_keys_are_found_by_their_hash_only(tmp_path: Path):
    key = new_key()
    path = tmp_path / "keys.toml"
    path.write_text(key_entry("his", key, ["LZH", "HXZ"]), encoding="utf-8")
    assert key not in path.read_text(encoding="utf-8") and hash_key(key) in path.read_text(encoding="utf-8")
    ring = KeyRing.load(path)
    assert len(ring) == 1 and ring.find(key).facilities == {"LZH", "HXZ"}
    assert ring.find(hash_key(key)) is None and ring.find("") is None


def test_rate_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0
    now[0] = 10.0
    assert limiter.take("a") == 0 and limiter.take("a") > 0


def test_cds_issuers_and_lists_come_from_toml_tables_or_the_environment_and_survive_the_workers_handoff(
    tmp_path: Path, monkeypatch
):
    """``[[cds_issuers]]`` in the TOML file, or JSON in RX_AUDIT_CDS_ISSUERS; lists comma-separated in the
    environment; what ``serve`` hands its workers reads back the same; a bad entry is one line."""
    from rx_audit.server.run import environment

    for name in ("RX_AUDIT_CDS_ISSUERS", "RX_AUDIT_CDS_AUDIENCE", "RX_AUDIT_WEBHOOK_ALLOW"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "server.toml"
    config.write_text('cds_audience = ["https://rx/cds-services/rx-audit-order-sign"]\n'
                      'webhook_allow = ["his.lzh.local", "*.county.cn"]\n'
                      '[[cds_issuers]]\niss = "https://ehr"\njwks_url = "https://ehr/jwks"\nfacilities = ["LZH"]\n',
                      encoding="utf-8")  # fmt: skip
    settings = Settings.load(config)
    assert settings.cds_audience == ("https://rx/cds-services/rx-audit-order-sign",)
    assert settings.webhook_allow == ("his.lzh.local", "*.county.cn")
    assert [(i.iss, i.jwks_url, i.facilities) for i in settings.cds_issuers] == [("https://ehr", "https://ehr/jwks",
                                                                                  {"LZH"})]  # fmt: skip
    for name, value in environment(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings.load() == settings
    monkeypatch.setenv("RX_AUDIT_CDS_ISSUERS", '[{"iss": "https://ehr", "jwks_url": "ftp://x", "facilities": ["A"]}]')
    with pytest.raises(SettingsError, match="jwks_url"):
        Settings.load()
    monkeypatch.setenv("RX_AUDIT_CDS_ISSUERS", "not json")
    with pytest.raises(SettingsError, match="not JSON"):
        Settings.load()
