"""The architecture as tests: every table has one owner, stages import only downwards, pages use core functions.

A simple scan of the source is enough (issue 14): SQL text in string literals (including the constant parts of
f-strings) that names a table after FROM/JOIN/INTO/UPDATE/TABLE, and sqlite-utils table handles
(`db["runs"].insert(...)`, `db.table("runs")`), must sit in the table's owner module.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

OPS_TABLES = ("meta", "movies", "users", "ratings", "rating_history", "events", "rejected_writes", "sim_shifts",
              "served_recommendations", "consent_history", "shadow_recommendations", "ad_campaigns", "ad_impressions")
WAREHOUSE_TABLES = ("dim_movie", "dim_user", "fact_interaction", "quarantine", "daily_aggregates", "data_versions",
                    "etl_runs", "etl_state", "fact_served", "fact_ad_impression", "fact_ad_click")
# Owner module(s) of each table, as paths relative to the project root. A store's schema module (it creates and
# migrates the tables) may name all of that store's tables.
OWNERS: dict[str, tuple[str, ...]] = {
    **{t: ("core/store/opsdb.py", "core/store/writes.py", "core/store/servinglog.py", "core/store/adslog.py")
       for t in OPS_TABLES},
    **{t: ("core/warehouse/warehouse.py", "core/warehouse/etl.py", "core/warehouse/dataset.py",
           "core/warehouse/lake.py", "core/warehouse/lake_etl.py", "core/warehouse/lake_dataset.py",  # the Spark twins
           "core/warehouse/churn_data.py")
       for t in WAREHOUSE_TABLES},
    "jobs": ("core/training/tracking.py",),
    "runs": ("core/training/tracking.py",),
    "model_versions": ("core/training/registry.py",),
    "registry_events": ("core/training/registry.py",),
    "monitor_days": ("core/monitoring/monitoring.py",),
    "drift_scores": ("core/monitoring/monitoring.py",),
    "alerts": ("core/monitoring/monitoring.py",),
    "daily_top50": ("core/monitoring/monitoring.py",),
    "policy": ("core/monitoring/policy.py",),
    "actions": ("core/monitoring/policy.py",),
    "deployments": ("core/serving/deployments.py",),
    "release_decisions": ("core/monitoring/release.py",),
    "erasure_requests": ("core/privacy/erasure.py",),
    "operator_audit": ("core/privacy/access.py",),
    "signin_failures": ("core/privacy/access.py",),
    "churn_predictions": ("core/training/churn_pipeline.py",),
    "ads_days": ("core/monitoring/ads_monitoring.py",),
}
ML_TABLES = tuple(t for t in OWNERS if t not in OPS_TABLES and t not in WAREHOUSE_TABLES)
SCHEMA_MODULES = {"core/store/mlopsdb.py": ML_TABLES}

SQL_VERB = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WITH)\b", re.I)
TABLE_HANDLE_METHODS = {"insert", "insert_all", "update", "upsert", "upsert_all", "delete", "delete_where", "rows",
                        "rows_where", "count", "get", "lookup", "create", "drop", "exists", "columns", "add_column"}

# Stages from the bottom up; a package may import its own modules, the foundation (core/*.py that are not
# entry points) and packages of a lower rank only.
# ads (issue 25) sits between training and serving: its model uses the CF and churn models (training) and serving
# selects the sponsored slot with it.
RANK = {"store": 1, "warehouse": 2, "training": 3, "ads": 3.5, "serving": 4, "monitoring": 5, "governance": 6,
        "simulation": 7, "privacy": 7, "server": 8, "cli": 9}
ENTRY_POINTS = {"cli", "bootstrap", "__main__"}          # core/*.py modules above every stage
# The one deliberate upward call: whoever takes the data folder's lock first finishes what a killed job left
# behind, whatever stage it belongs to (core/privacy/recovery.py); imported lazily, at lock time only.
UPWARD_EXCEPTIONS = {("core/store/locks.py", "core.privacy.recovery")}


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def sql_strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)


def table_uses(path: Path) -> set[tuple[str, int]]:
    """(table, line) for every SQL literal or sqlite-utils handle naming a known table."""
    tree = ast.parse(path.read_text())
    found = set()
    for line, text in sql_strings(tree):
        if not SQL_VERB.search(text):
            continue
        for table in OWNERS:
            if re.search(rf"\b(FROM|JOIN|INTO|UPDATE|TABLE|EXISTS)\s+(\w+\.)?{table}\b", text, re.I):
                found.add((table, line))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in TABLE_HANDLE_METHODS
                and isinstance(node.value, ast.Subscript) and isinstance(node.value.slice, ast.Constant)
                and node.value.slice.value in OWNERS):
            found.add((node.value.slice.value, node.lineno))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "table"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in OWNERS):
            found.add((node.args[0].value, node.lineno))
    return found


def ownership_violations() -> list[str]:
    out = []
    for path in python_files("core") + python_files("dashboard"):
        rel = path.relative_to(ROOT).as_posix()
        for table, line in sorted(table_uses(path)):
            if rel in OWNERS[table] or table in SCHEMA_MODULES.get(rel, ()):
                continue
            out.append(f"{rel}:{line} names table {table} (owner: {', '.join(OWNERS[table])})")
    return out


def test_the_scan_finds_sql_and_table_handles(tmp_path):
    """The scanner itself: it must see plain SQL, f-string SQL and sqlite-utils handles, and ignore prose."""
    probe = tmp_path / "probe.py"
    probe.write_text('a = "SELECT x FROM users WHERE 1"\n'
                     'b = f"DELETE FROM {schema}.fact_interaction WHERE user_id = {u}"\n'
                     'db["runs"].insert({})\n'
                     'c = "users who rated from the catalogue"\n'
                     'd = summary["ratings"]\n')
    assert sorted(t for t, _ in table_uses(probe)) == ["fact_interaction", "runs", "users"]


def test_every_table_is_named_only_by_its_owner():
    assert ownership_violations() == []


def stage_of(rel: str) -> str | None:
    parts = rel.split("/")
    if parts[0] != "core":
        return None
    if len(parts) == 2:
        stem = parts[1][:-3]
        return "cli" if stem in ENTRY_POINTS else "foundation"
    return "cli" if parts[1] == "cli" else parts[1]


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every core module a file imports (module level or inside functions), as dotted names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "core":
            for alias in node.names:
                out.append((f"{node.module}.{alias.name}", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append(("<relative>", node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "core")
    return out


def target_stage(dotted: str) -> str:
    parts = dotted.split(".")
    if len(parts) >= 2 and parts[1] in RANK:
        return parts[1]
    return "cli" if len(parts) >= 2 and parts[1] in ENTRY_POINTS else "foundation"


def layering_violations() -> list[str]:
    out = []
    for path in python_files("core"):
        rel = path.relative_to(ROOT).as_posix()
        stage = stage_of(rel)
        for dotted, line in imported_modules(path):
            if dotted == "<relative>":
                out.append(f"{rel}:{line} uses a relative import (write core.<stage>.<module>)")
                continue
            target = target_stage(dotted)
            if target == stage or target == "foundation":
                continue
            if (rel, ".".join(dotted.split(".")[:3])) in UPWARD_EXCEPTIONS:
                continue
            if stage == "foundation" or RANK[target] >= RANK[stage]:
                out.append(f"{rel}:{line} ({stage}) imports {dotted} ({target})")
    return out


def test_stages_import_only_downwards():
    assert layering_violations() == []


def test_the_layering_check_sees_an_upward_import(tmp_path, monkeypatch):
    (tmp_path / "core" / "store").mkdir(parents=True)
    (tmp_path / "core" / "store" / "bad.py").write_text("def f():\n    from core.serving import serving\n")
    (tmp_path / "core" / "training").mkdir()
    (tmp_path / "core" / "training" / "ok.py").write_text("from core.store import opsdb\nfrom core import errors\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert layering_violations() == ["core/store/bad.py:2 (store) imports core.serving.serving (serving)"]


STORE_MODULES = ("core.store", "core.warehouse.warehouse")


@pytest.mark.parametrize("path", python_files("dashboard"), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_dashboard_never_imports_a_store_module(path):
    """Pages go through core functions; a page that opens a database couples the UI to a schema."""
    bad = [f"line {line}: {dotted}" for dotted, line in imported_modules(path)
           if any(dotted == s or dotted.startswith(s + ".") for s in STORE_MODULES)]
    assert bad == []


def test_only_training_knows_the_model_artifact_file_names():
    """Model artifacts are a store too: bundle and ranker file names live in core/training (artifacts, models,
    ranker); privacy, serving and governance go through artifacts' functions and constants."""
    from core.training import artifacts, ranker
    names = set(artifacts.FILES) | set(ranker.RANKER_FILES)
    leaks = []
    for path in python_files("core") + python_files("dashboard"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("core/training/"):
            continue
        for line, text in sql_strings(ast.parse(path.read_text())):
            leaks += [f"{rel}:{line} names {n}" for n in names if n in text]
    assert leaks == []
