"""A benchmark's report is kept with what it was measured on, and only when the run succeeded (issue 27.6)."""
import re

import pytest

from benchmarks import results_file


def test_a_finished_run_writes_its_printed_report_under_a_header(tmp_path, capsys):
    out = tmp_path / "world.md"
    with results_file.recorded("world", "World build (`bench_world.py`)", out=out):
        print("| figure | value |\n| --- | ---: |\n| build time | 18.6 s |")
    assert "| build time | 18.6 s |" in capsys.readouterr().out        # still printed
    text = out.read_text()
    head, body = text.split("\n\n", 2)[:2], text.split("\n\n", 2)[2]
    assert head[0] == "# World build (`bench_world.py`)"
    assert re.match(r"Run \d{4}-\d\d-\d\d \d\d:\d\d UTC, commit [0-9a-f]{7,}.*, \d+ cores \(.+\), Python 3\.\d+"
                    r".*load average \(1/5/15 min\) [\d.]+ / [\d.]+ / [\d.]+ at the start, .* at the end; \d+ s in all",
                    head[1]), head[1]
    assert body == "| figure | value |\n| --- | ---: |\n| build time | 18.6 s |\n"


def test_a_failed_run_leaves_the_last_good_figures(tmp_path):
    out = tmp_path / "world.md"
    out.write_text("the last good run\n")
    with pytest.raises(RuntimeError):
        with results_file.recorded("world", "World build", out=out):
            print("half a report")
            raise RuntimeError("interrupted")
    assert out.read_text() == "the last good run\n"


def test_a_trial_run_can_keep_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRO_BENCH_RESULTS", "0")
    out = tmp_path / "world.md"
    with results_file.recorded("world", "World build", out=out):
        print("a small trial")
    assert not out.exists()
