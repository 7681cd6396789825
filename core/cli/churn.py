"""The churn model: churn train | score [--user ID] | evaluate | status."""
from __future__ import annotations

from core import errors
from core.cli import ID, SEED, arg, command, emit, progress
from core.privacy import access


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _metric_rows(model: dict, baseline: dict) -> str:
    rows = [("ROC AUC", "roc_auc"), ("PR AUC", "pr_auc"), ("Brier score (lower is better)", "brier"),
            ("lift in the top decile", "top_decile_lift"), ("churn rate (holdout)", "base_rate")]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {'':{width}}  {'model':>8}  {'recency rule':>12}"]
    lines += [f"  {label:{width}}  {_num(model.get(k)):>8}  {_num(baseline.get(k)):>12}" for label, k in rows]
    return "\n".join(lines)


@command("churn", help="churn model: train | score [--user ID] | evaluate | status", args=[
    arg("action", choices=["train", "score", "evaluate", "status"]),
    arg("--user", type=ID, help="score: one user (with the reasons for their risk)"),
    arg("--version", type=ID, help="evaluate: a churn version (default: production)"),
    arg("--seed", type=SEED, help="train: random seed (default: settings seed 42)"),
    arg("--no-promote", action="store_true", help="train: register the candidate but never promote it"),
])
def cmd_churn(args, settings):
    from core.training import churn_pipeline as cp
    if args.action != "score" and args.user is not None:
        raise errors.ValidationError("--user belongs to `churn score`")
    if args.action != "evaluate" and args.version is not None:
        raise errors.ValidationError("--version belongs to `churn evaluate`")
    if args.action != "train" and (args.seed is not None or args.no_promote):
        raise errors.ValidationError("--seed and --no-promote belong to `churn train`")
    if args.action == "train":
        actor = access.cli_actor()
        with access.cli_action(settings, "churn train") as entry:
            result = cp.train(settings, seed=args.seed, promote=not args.no_promote, actor=actor,
                              progress=progress(args))
            entry["target"] = f"v{result['version']}"
        emit(args, result, lambda: print(
            f"churn v{result['version']} (run {result['run_id']}, data {result['data_version']}): "
            + ("promoted" if result["promoted"] else "kept as candidate") + "\n"
            + _metric_rows(result["metrics"], result["baselines"]["recency"]) + "\n"
            + "\n".join(f"  {r}" for r in result["gate"]["reasons"])))
    elif args.action == "score":
        # the score shown is stored like any other (the reasons come with it for one user)
        if args.user is not None:       # one user's risk and reasons: personal data, audited (target the pseudonym)
            from core.pseudonym import pseudonym, pseudonym_key
            with access.cli_action(settings, "personal data", pseudonym(args.user, pseudonym_key(settings)),
                                   audit_as="churn score --user"):
                result = cp.explain_user(settings, args.user, store=True)
        else:
            with access.cli_action(settings, "churn score") as entry:
                result = cp.score(settings)
                entry["target"] = f"v{result['version']}: {result['users']} users as of {str(result['as_of'])[:10]}"

        def human():
            if args.user is None:
                print(f"churn v{result['version']} scored {result['users']:,} active users as of {result['as_of']}: "
                      f"mean risk {_pct(result['mean_risk'])} (stored {result['stored']:,})")
            elif not result["active"]:
                print(result["note"])
            else:
                print(f"user {args.user}: churn risk {_pct(result['risk'])} (v{result['version']}, as of {result['as_of']})")
                for reason in result["reasons"]:
                    print(f"  - {reason}")
        emit(args, result, human)
    elif args.action == "evaluate":
        with access.cli_action(settings, "evaluate", audit_as="churn evaluate") as entry:
            result = cp.evaluate(settings, args.version)
            entry["target"] = f"v{result['version']}"
        online = result["online"]

        def human():
            print(f"churn v{result['version']} on the holdout as of {result['holdout_as_of']} "
                  f"({result['model']['rows']:,} users):")
            print(_metric_rows(result["model"], result["baseline"]))
            if online.get("rows"):
                print(f"online check ({online['window'][0]} – {online['window'][1]}, {online['rows']:,} stored scores): "
                      f"ROC AUC {_num(online.get('roc_auc'))}, Brier {_num(online.get('brier'))}, predicted "
                      f"{_pct(online.get('mean_predicted'))} vs observed {_pct(online.get('base_rate'))}")
            else:
                print("online check: " + online.get("note", "no stored scores to check yet"))
        emit(args, result, human)
    else:
        result = cp.status(settings)
        emit(args, result, lambda: print(
            ("no churn model in production" if result["version"] is None else
             f"churn v{result['version']} ({'POSSIBLY STALE' if result['stale'] else 'current'})") + "\n"
            + "\n".join(f"  - {r}" for r in result["reasons"])))
