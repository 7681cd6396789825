"""The data folder's store lock: re-entrant in a thread, exclusive across threads and processes."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.store import locks, opsdb
from core.privacy import erasure
from core.simulation import simulation
from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(tmp_path):
    s = load_settings(tmp_path)
    simulation.init_world(s, seed=2, users=40, movies=30, days=2)
    return s


def test_reentrant_in_one_thread_and_says_who_holds_it(tmp_path):
    s = load_settings(tmp_path)
    lock_file = tmp_path / locks.LOCK_FILE
    with locks.store_lock(s, "retrain"):
        with locks.store_lock(s, "ETL"):            # retrain runs the ETL inside its own lock
            assert lock_file.read_text().startswith("retrain, pid ")
        assert lock_file.read_text().startswith("retrain, pid ")
    assert lock_file.read_text() == ""


def test_an_erasure_waits_for_a_running_job(small):
    with opsdb.session(small) as db:
        user = db.execute("SELECT min(user_id) FROM users").fetchone()[0]
    times = {}
    holding = threading.Event()

    def job():
        with locks.store_lock(small, "retrain"):
            holding.set()
            time.sleep(0.6)
            times["released"] = time.monotonic()

    t = threading.Thread(target=job)
    t.start()
    holding.wait(5)
    started = time.monotonic()
    erasure.forget_user(small, user, actor="test")
    times["erased"] = time.monotonic()
    t.join()
    assert times["erased"] > times["released"] and times["released"] - started > 0.4
    with opsdb.session(small) as db:
        assert db.execute("SELECT count(*) FROM users WHERE user_id = ?", [user]).fetchone()[0] == 0


@pytest.mark.slow   # a million rows / a second process / a world built twice
def test_busy_after_the_timeout_names_the_holder_even_in_another_process(tmp_path):
    s = load_settings(tmp_path)
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from core.store import locks; "
            "from core.settings import load_settings; s = load_settings(sys.argv[2])\n"
            "with locks.store_lock(s, 'retrain'):\n    print('held', flush=True); time.sleep(3)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(locks.StoreBusy, match=r"busy \(retrain, pid \d+\); erasure did not start"):
            with locks.store_lock(s, "erasure", timeout=0.2):
                pass
    finally:
        proc.wait(10)
    with locks.store_lock(s, "erasure", timeout=1):    # free again once the other process is done
        pass
