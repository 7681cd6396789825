"""Integrations with the tools a team already runs: `mlflow export` (runs and models mirrored into MLflow)."""
from __future__ import annotations

from core.cli import TEXT, arg, command, emit, progress
from core.privacy import access


@command("mlflow", help="mirror runs, registered versions and the production recommender into MLflow: export "
                        "[--tracking-uri URI] (needs requirements-mlflow.txt)", args=[
    arg("action", choices=["export"]),
    arg("--tracking-uri", type=TEXT, default=None, metavar="URI",
        help="an MLflow tracking URI (sqlite:///…, http://host:5000, …); default: sqlite:///<data folder>/mlflow.db"),
    arg("--no-pyfunc", action="store_true",
        help="skip logging the production recommender as a pyfunc model (runs and registry only)"),
])
def cmd_mlflow(args, settings):
    from core.governance import mlflow_export
    with access.cli_action(settings, "mlflow export", args.tracking_uri or "data folder"):
        mlflow_export.check_available()
        summary = mlflow_export.export(settings, args.tracking_uri, pyfunc=not args.no_pyfunc,
                                       progress=progress(args))

    def human():
        runs, versions = summary["runs"], summary["versions"]
        print(f"MLflow at {summary['tracking_uri']} (experiment {mlflow_export.EXPERIMENT}): "
              f"runs {runs['created']} new, {runs['updated']} updated, {runs['unchanged']} unchanged; "
              f"versions {versions['created']} new, {versions['updated']} updated, {versions['unchanged']} unchanged")
        for model, aliases in summary["aliases"].items():
            print(f"  {model}: " + (", ".join(f"@{a} = version {v}" for a, v in aliases.items()) or "no alias"))
        rec = summary["recommender"]
        if rec is None:
            print("  no production model: no pyfunc recommender logged" if not args.no_pyfunc else "")
        else:
            print(f"  {mlflow_export.RECOMMENDER} version {rec['version']} (cf v{rec['cf_version']}"
                  + (f", ranker v{rec['ranker_version']}" if rec["ranker_version"] else "") + ")"
                  + ("" if rec["logged"] else ", unchanged"))
    emit(args, summary, human)
