"""One secrets module (issue 14): atomic, locked read-modify-write of RETRO_HOME/secrets.toml.

The pseudonymization key used to be created by a non-atomic read-then-append: two processes starting at once
(make run's first start and a dashboard session) could each write a key, and the file could hold two
[pseudonymization] tables. Now of N processes racing, all get the first one's key.
"""
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from core.privacy import access
from core import secretstore
from core.pseudonym import pseudonym_key
from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
RACE = """
import sys, time
from core.settings import load_settings
from core.pseudonym import pseudonym_key
from core.privacy import access
s = load_settings(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))   # all start at the same instant
print(pseudonym_key(s).decode())
access.add_operator(s, f"op{sys.argv[3]}", "x" * 24)
"""


def test_racing_processes_share_one_key_and_keep_every_operator(tmp_path):
    import time
    home = tmp_path / "home"
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(home), str(start), str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    keys = {o.strip() for o, _ in outs}
    assert len(keys) == 1
    data = tomllib.loads((home / "secrets.toml").read_text())        # valid TOML: one table each
    assert data["pseudonymization"]["key"] == keys.pop()
    assert set(data["operators"]) == {f"op{i}" for i in range(8)}
    assert stat.S_IMODE((home / "secrets.toml").stat().st_mode) == 0o600


def test_write_is_atomic_and_round_trips(tmp_path):
    s = load_settings(tmp_path)
    secretstore.write_secrets(s, {"a": {"b": 'c "quoted"', "n": 3, "ok": True, "l": [1, 2]}})
    assert secretstore.read_secrets(s) == {"a": {"b": 'c "quoted"', "n": 3, "ok": True, "l": [1, 2]}}
    assert not list(tmp_path.glob("secrets.toml.*.tmp"))
    key = pseudonym_key(s)
    assert pseudonym_key(s) == key and secretstore.read_secrets(s)["a"]["n"] == 3     # other tables kept
    access.add_operator(s, "alice", "y" * 24)
    assert "alice" in secretstore.read_secrets(s)["operators"]
