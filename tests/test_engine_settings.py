"""The engine setting (issue 15): embedded by default, `spark` by RETRO_ENGINE, anything else refused at once."""
import pytest

from core.settings import load_settings


def test_the_embedded_engine_is_the_default(tmp_path, monkeypatch):
    for name in ("RETRO_ENGINE", "RETRO_SPARK_MASTER", "RETRO_LAKE_URI"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(tmp_path)
    assert (s.engine, s.spark_master, s.lake_uri) == ("embedded", "local[*]", None)


def test_the_environment_selects_spark_its_master_and_lake(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRO_ENGINE", "spark")
    monkeypatch.setenv("RETRO_SPARK_MASTER", "spark://cluster:7077")
    monkeypatch.setenv("RETRO_LAKE_URI", "s3a://bucket/lake")
    s = load_settings(tmp_path)
    assert (s.engine, s.spark_master, s.lake_uri) == ("spark", "spark://cluster:7077", "s3a://bucket/lake")


def test_an_unknown_engine_is_refused_with_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRO_ENGINE", "hadoop")
    with pytest.raises(ValueError, match="RETRO_ENGINE must be one of embedded, spark, got 'hadoop'"):
        load_settings(tmp_path)


def test_the_cli_refuses_an_unknown_engine_in_one_line(tmp_path, monkeypatch, capsys):
    from core.cli import main
    monkeypatch.setenv("RETRO_ENGINE", "hadoop")
    assert main(["--home", str(tmp_path / "h"), "init", "--users", "10", "--movies", "10", "--days", "1"]) == 1
    err = capsys.readouterr().err
    assert err == "error: RETRO_ENGINE must be one of embedded, spark, got 'hadoop'\n"


def test_the_driver_address_executors_reach_is_a_setting(monkeypatch):
    """127.0.0.1 on one machine (local mode, the test cluster); RETRO_SPARK_DRIVER_HOST on a cluster of machines."""
    from core.warehouse import spark
    monkeypatch.delenv("RETRO_SPARK_DRIVER_HOST", raising=False)
    assert spark._driver_host() == "127.0.0.1"
    monkeypatch.setenv("RETRO_SPARK_DRIVER_HOST", "10.0.0.5")
    assert spark._driver_host() == "10.0.0.5"
