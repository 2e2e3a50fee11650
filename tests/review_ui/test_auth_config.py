"""Users file, password checks, OIDC mapping and settings precedence (no Streamlit runtime)."""

from __future__ import annotations

from pathlib import Path

import pytest

from review_ui import auth
from review_ui.config import ConfigError, load_settings, redact_url
from tests.review_ui.helpers import DEMO_USERS


def test_demo_users_file_loads_and_verifies() -> None:
    records = auth.load_users(DEMO_USERS)
    assert set(records) == {"yao01", "yao02", "admin"}
    user = auth.verify_password(records, "yao01", "yao01-demo")
    assert user is not None and user.role == "pharmacist" and user.id == "yao01"
    assert records["yao02"].user.facilities == ("LZH", "HXZ")
    assert records["admin"].user.is_admin


@pytest.mark.parametrize(("name", "password"), [("yao01", "wrong"), ("nobody", "yao01-demo"), ("yao01", "")])
def test_wrong_credentials_are_refused(name: str, password: str) -> None:
    assert auth.verify_password(auth.load_users(DEMO_USERS), name, password) is None


def test_yaml_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    hashed = auth.hash_password("s3cret", rounds=4)
    path.write_text(
        f"users:\n  zhang:\n    name: 张药师\n    role: admin\n    password_hash: '{hashed}'\n", encoding="utf-8"
    )
    records = auth.load_users(path)
    assert auth.verify_password(records, "zhang", "s3cret").is_admin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[users.a]\nrole = 'root'\n", "role"),
        ("[users.a]\npassword_hash = 'plain'\n", "bcrypt"),
        ("title = 'x'\n", "users"),
        ("[users\n", "无法读取"),
    ],
)
def test_bad_users_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(auth.UsersFileError, match=message):
        auth.load_users(path)


def test_oidc_identity_mapping() -> None:
    records = auth.load_users(DEMO_USERS)
    director = auth.user_for_oidc(records, "Director@Example.org", "X", None)
    assert director is not None and director.id == "admin" and director.via == "oidc"
    assert auth.user_for_oidc(records, "stranger@example.org", "S", None) is None
    guest = auth.user_for_oidc(records, "stranger@example.org", "S", "pharmacist")
    assert guest is not None and guest.role == "pharmacist" and guest.id == "stranger@example.org"


def test_throttle_locks_after_repeated_failures() -> None:
    throttle = auth._Throttle()
    for _ in range(auth.MAX_FAILURES):
        assert throttle.locked_for("x") == 0
        throttle.fail("x")
    assert throttle.locked_for("x") > 0
    throttle.clear("x")
    assert throttle.locked_for("x") == 0


def test_hash_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert auth.main(["hash", "--rounds", "4"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$2b$04$")


def test_settings_precedence(tmp_path: Path) -> None:
    (tmp_path / "rx_audit.toml").write_text(
        'db_url = "sqlite:///from-file.db"\n[review_ui]\nrules = "file-rules"\nrefresh_seconds = 5\n', encoding="utf-8"
    )
    settings = load_settings({}, cwd=tmp_path)
    assert settings.db_url == "sqlite:///from-file.db" and settings.rules == "file-rules"
    assert settings.refresh_seconds == 5
    settings = load_settings({"RX_AUDIT_DB_URL": "sqlite:///env.db", "RX_AUDIT_USERS": "u.toml"}, cwd=tmp_path)
    assert settings.db_url == "sqlite:///env.db" and settings.users == "u.toml"
    assert settings.sources["db_url"] == "env RX_AUDIT_DB_URL"
    assert load_settings({"RX_AUDIT_DB": "sqlite:///cli.db"}, cwd=tmp_path).db_url == "sqlite:///cli.db"
    defaults = load_settings({}, cwd=tmp_path / "nowhere")
    assert defaults.db_url == "sqlite:///rx_audit.db" and defaults.users is None


def test_settings_config_file_env_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('users = "/etc/rx/users.toml"\n', encoding="utf-8")
    assert load_settings({"RX_AUDIT_CONFIG": str(path)}).users == "/etc/rx/users.toml"
    with pytest.raises(ConfigError):
        load_settings({"RX_AUDIT_CONFIG": str(tmp_path / "missing.toml")})
    path.write_text("refresh_seconds = 'soon'\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings({"RX_AUDIT_CONFIG": str(path)})


def test_redacted_url_hides_password() -> None:
    assert redact_url("postgresql+psycopg://rx:secret@db:5432/rx") == "postgresql+psycopg://rx:***@db:5432/rx"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"
