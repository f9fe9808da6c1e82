from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from prelim.cli import main
from prelim.config_doc import settings_table
from prelim.settings import Settings, load_settings


def test_precedence_flag_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "prelim.toml"
    toml.write_text('ae_title = "FROMFILE"\nlistener_port = 2000\nstable_age_s = 3.5\n')
    monkeypatch.setenv("PRELIM_CONFIG", str(toml))
    monkeypatch.setenv("PRELIM_LISTENER_PORT", "3000")
    s = load_settings(stable_age_s=None)
    assert (s.ae_title, s.listener_port, s.stable_age_s) == ("FROMFILE", 3000, 3.5)
    s = load_settings(listener_port=4000)
    assert s.listener_port == 4000


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRELIM_CONFIG", str(tmp_path / "none.toml"))
    with pytest.raises(ValidationError):
        load_settings(allowed_networks=["not-a-network"])
    with pytest.raises(ValidationError):
        load_settings(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValidationError):
        load_settings(ae_title="THIS_AE_TITLE_IS_TOO_LONG")


def test_cli_reports_bad_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PRELIM_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("PRELIM_LISTENER_PORT", "99999")
    assert main(["config", "--current"]) == 2
    assert "PRELIM_LISTENER_PORT" in capsys.readouterr().err


def test_config_table_lists_every_setting() -> None:
    table = settings_table()
    for name in Settings.model_fields:
        assert f"`PRELIM_{name.upper()}`" in table


def test_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRELIM_CONFIG", str(tmp_path / "none.toml"))
    s = load_settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'prelim.db'}"
    assert s.resolved_spool_dir == (tmp_path / "spool").resolve()
    assert s.listener_port == 11112 and s.ae_title == "PRELIM"


def test_readme_configuration_table_is_current() -> None:
    from pathlib import Path

    from prelim.config_doc import readme_with_table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert readme == readme_with_table(readme), "run `make readme` to regenerate the table"
