"""The training pipeline: ETL → split → train → evaluate → register → gate → promote.

`retrain()` is the one call the CLI, the dashboard and the monitoring policy
use. It reports progress through a callback, keeps a job record, and never
leaves a half-deployed model: the production pointer moves only after the
bundle is saved and the gate has passed.
"""
from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from core.warehouse import dataset, etl
from core.training import gate, registry, tracking
from core.store import locks
from core.training.artifacts import load_bundle, save_bundle
from core.constants import CF_KINDS, DEFAULT_K
from core.errors import RetroError, ValidationError
from core.filemodes import private_dir
from core.training.models import (MODELS, PopularityRecommender, WeightedRatingRecommender, check_ease_memory,
    choose_ease_regularization)
from core.training.spark_als import SparkALSRecommender
from core.settings import Settings
from core.training.evaluation import (HOLDOUT_DAYS, production_staleness, refit_production_config, same_as,
    current_data_version, evaluate_bundle, evaluate_model, full_matrix, gate_reference, holdout_split, score_lists,
    top50_columns)
from core.training.evaluation import data_version_label, evaluate_version  # noqa: F401 - the names callers knew here

Progress = Callable[[float, str], None]
DENSE_KINDS = ("ease", "blend")      # dense items × items matrices: the settings' ease_max_memory_mb applies
BEST = "best"                         # retrain --model best: ALS, EASE and the blend, the best on the holdout
BEST_KINDS = ("als", "ease", "blend")
GATE_MARGIN = 0.0


def _noop(fraction: float, message: str) -> None:
    pass


def sim_now(settings: Settings) -> str:
    """The service clock (`clock.now`)."""
    from core.store.clock import now
    return now(settings)


# ------------------------------------------------------------------ training
@dataclass
class TrainResult:
    run_id: int
    model_kind: str
    metrics: dict
    baselines: dict
    timings: dict
    artifact_path: str
    artifact_hash: str
    data_version: str
    has_nan: bool
    estimator: object = None   # the model fitted on the training window (reused by the ranker's evaluation)
    comparison: dict | None = None     # paired bootstrap vs the production reference (None: no production)
    staleness: dict | None = None      # how far production's training data is behind the newest data
    same_as_production: str | None = None   # set when data version and parameters equal production's
    yardstick: dict | None = None      # the counterfactual comparison on the holdout days' exploration log

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "estimator"}


@locks.exclusive("train")
def train(settings: Settings, model: str = "als", *, seed: int | None = None, params: dict | None = None,
          holdout_days: int = HOLDOUT_DAYS, weights: dataset.ConfidenceWeights = dataset.ConfidenceWeights(),
          job_id: int | None = None, progress: Progress = _noop, at: str | None = None) -> TrainResult:
    """Fit on the training window, evaluate on the holdout (with baselines), refit on all data, save."""
    if model not in CF_KINDS:
        raise ValidationError(f"unknown model {model!r}; choose one of: {', '.join(CF_KINDS)}")
    if not isinstance(holdout_days, int) or holdout_days < 1:
        raise ValidationError(f"holdout days must be a positive integer, got {holdout_days!r}")
    seed = settings.seed if seed is None else int(seed)
    estimator_cls = _estimator_class(settings, model)
    params = dict(params or {})
    if model in DENSE_KINDS:      # refuse a catalogue too large for the dense item-item matrices before any work
        check_ease_memory(catalogue_size(settings), settings.ease_max_memory_mb)
    split, chosen_lambda = None, None
    lambda_key = {"ease": "regularization", "blend": "ease_regularization"}.get(model)
    if lambda_key and lambda_key not in params:
        # EASE's λ (and its dropout, user weight and diagonal rule) on a validation split of the training window
        # (never the holdout), before the run records them
        t = time.perf_counter()
        progress(0.0, "building the training matrix and the time-based holdout")
        split = holdout_split(settings, holdout_days, weights)
        split_seconds = time.perf_counter() - t
        t = time.perf_counter()
        progress(0.05, f"choosing EASE's regularization on a validation split of {split.train_pairs:,} interactions")
        chosen, curve = choose_ease_regularization(split.train.user_items, seed=seed,
                                                   max_memory_mb=settings.ease_max_memory_mb)
        prefix = "" if model == "ease" else "ease_"
        params |= {prefix + k: v for k, v in chosen.items() if prefix + k not in params}
        chosen_lambda = {"key": lambda_key, "value": params[lambda_key], "seconds": time.perf_counter() - t,
                         "validation_ndcg@10": {str(k): v for k, v in curve.items()}}
    try:
        probe = estimator_cls(**params, random_state=seed)
    except TypeError as exc:
        raise ValidationError(f"bad parameters for {model}: {exc}") from None
    at = at or sim_now(settings)
    data_version = current_data_version(settings)
    full_params = probe.params()
    # What the run records: the model's parameters and the engine that trained it (Spark adds its λ scaling).
    engine_params = probe.run_params() if hasattr(probe, "run_params") else full_params | {"engine": settings.engine}
    run_params = engine_params | {"holdout_days": holdout_days, "weights": weights.to_dict()}
    if chosen_lambda is not None:
        run_params["lambda_validation_ndcg@10"] = chosen_lambda["validation_ndcg@10"]
    run_id = tracking.start_run(settings, model, run_params, seed, data_version, job_id=job_id, at=at)
    timings: dict[str, float] = {}
    refit = None
    try:
        if split is None:
            t = time.perf_counter()
            progress(0.0, "building the training matrix and the time-based holdout")
            split = holdout_split(settings, holdout_days, weights)
            timings["split"] = time.perf_counter() - t
        else:
            timings |= {"split": split_seconds, "choose_lambda": chosen_lambda["seconds"]}

        refit = _Refit(settings, estimator_cls, params, seed, weights, split.train.movie_ids,
                       beside=settings.engine != "spark" and model not in DENSE_KINDS)
        t = time.perf_counter()
        progress(0.2, f"fitting {model} on {split.train_pairs:,} interactions")
        estimator = estimator_cls(**params, random_state=seed).fit(split.train.user_items)
        timings["fit"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.45, "evaluating on the holdout (model and baselines)")
        scores, per_user = evaluate_model(estimator, split, per_user=True)
        top_cols = top50_columns(settings, split)
        baselines = {
            "popularity": evaluate_model(PopularityRecommender().fit(split.train.user_items), split),
            "top50": evaluate_model(WeightedRatingRecommender(top_cols).fit(split.train.user_items), split),
        }
        comparison = staleness = same = yardstick = None
        prod = registry.production(settings)
        if prod is not None:
            prod_per_user, prod_bundle = None, None
            try:
                prod_bundle = load_bundle(prod["artifact_path"])
                evaluated, prod_per_user = evaluate_bundle(prod_bundle, split, top_cols, per_user=True)
                baselines["production"] = evaluated | {"version": int(prod["version"])}
            except (OSError, RetroError, ValueError) as exc:
                baselines["production"] = {"error": f"could not evaluate production v{prod['version']}: {exc}"}
            reference = "deployed production model on the same holdout"
            if baselines["production"].get("overlaps_holdout") or "error" in baselines["production"]:
                baselines["production_config"], prod_per_user = refit_production_config(
                    prod, model, full_params, scores, per_user, split)
                reference = f"production v{prod['version']}'s configuration refit on this training window"
            comparison = gate.paired_bootstrap(per_user, prod_per_user, resamples=settings.gate_bootstrap_resamples,
                                               seed=seed) | {"metric": "ndcg@10", "reference": reference}
            staleness = production_staleness(settings, baselines["production"], split, prod_bundle)
            yardstick = gate_yardstick(settings, split, estimator, model, full_params, prod, prod_bundle,
                                       baselines["production"], top_cols, seed)
            if "error" not in yardstick:     # the registry's baselines floor reads the run's record
                values = yardstick["values"]
                baselines["counterfactual"] = {
                    "estimator": yardstick["estimator"], "ess": yardstick["ess"], "values": values,
                    "decides": yardstick["ess"] >= settings.gate_min_ess,
                    "passes": all(values["candidate"] > values[b] for b in yardstick["baselines"])}
            if not staleness.get("withdrawn_consent"):   # a consent withdrawal changes the data, not its version
                same = same_as(prod, data_version, run_params)
        timings["evaluate"] = time.perf_counter() - t

        progress(0.65, "refitting on all data for deployment")
        full, deployed, timings["refit"] = refit.result()
        factors = [getattr(deployed, a, None) for a in ("user_factors_", "item_factors_")] + \
                  [getattr(estimator, a, None) for a in ("user_factors_", "item_factors_")]
        has_nan = any(f is not None and not np.isfinite(f).all() for f in factors)

        t = time.perf_counter()
        path = private_dir(settings.models_dir) / f"run-{run_id}"   # models/ is 0700, like the data folder
        meta = {"run_id": run_id, "model_kind": model, "params": full_params, "seed": seed,
                "data_version": data_version, "holdout_cutoff": str(split.cutoff), "trained_until": str(split.end),
                "weights": weights.to_dict(), "code_version": tracking.code_version(), "engine": settings.engine}
        digest = save_bundle(path, deployed, full, meta)
        timings["save"] = time.perf_counter() - t
        scores |= {"train_pairs": split.train_pairs, "holdout_pairs": split.holdout_pairs,
                   "users": int(full.user_items.shape[0]), "items": int(full.user_items.shape[1])}
        tracking.finish_run(settings, run_id, scores, baselines, timings, str(path), digest, at=at)
    except Exception as exc:
        tracking.fail_run(settings, run_id, f"{type(exc).__name__}: {exc}", at=at)
        raise
    finally:
        if refit is not None:
            refit.close()
    progress(0.8, f"run {run_id}: ndcg@10 {scores['ndcg@10']:.4f}")
    return TrainResult(run_id, model, scores, baselines, timings, str(path), digest, data_version, has_nan, estimator,
                       comparison, staleness, same, yardstick)


class _Refit:
    """The deployed model's refit on all data. `beside`: started as soon as the split is known and run on its own
    thread beside the fit on the training window and its evaluation — it needs neither, and implicit's fits hold no
    GIL, so on two cores a retrain waits about one fit less (the first start's model, the retrain button). The same
    model either way: same data, parameters and seed, each fit single-threaded. Otherwise it runs in turn, when asked
    for: on the Spark engine (its session's jobs are not split across threads) and for EASE and the blend, whose
    dense items × items matrices `ease_max_memory_mb` bounds for one fit at a time."""

    def __init__(self, settings: Settings, estimator_cls, params: dict, seed: int,
                 weights: dataset.ConfidenceWeights, movie_ids: np.ndarray, *, beside: bool):
        self._run = functools.partial(self._fit, settings, estimator_cls, params, seed, weights, movie_ids)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="refit") if beside else None
        self._future = self._pool.submit(self._run) if self._pool else None

    @staticmethod
    def _fit(settings, estimator_cls, params, seed, weights, movie_ids):
        t = time.perf_counter()
        full = full_matrix(settings, weights, movie_ids)
        deployed = estimator_cls(**params, random_state=seed).fit(full.user_items)
        return full, deployed, time.perf_counter() - t

    def result(self) -> tuple[dataset.Matrix, object, float]:
        """(all data, the deployed model, the refit's own seconds); raises what the refit raised."""
        return self._future.result() if self._future else self._run()

    def close(self) -> None:
        """Wait for a refit still running (a failed evaluation: nothing may outlive the store lock)."""
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)


def catalogue_size(settings: Settings) -> int:
    """Titles in the warehouse's catalogue: the item columns a model trained now would have."""
    from core.warehouse import warehouse
    with warehouse.session(settings) as con:
        return warehouse.catalogue_size(con)


def train_best(settings: Settings, kinds: tuple[str, ...] = BEST_KINDS, *, seed: int | None = None,
               params: dict | None = None, holdout_days: int = HOLDOUT_DAYS, job_id: int | None = None,
               progress: Progress = _noop, at: str | None = None) -> tuple[TrainResult, list[dict]]:
    """Train every kind of `kinds` on the same split and return (the one with the best holdout nDCG@10, a summary of
    each). Each kind is a `train` (its own run and bundle); the holdout is the same for all (the split depends only
    on the data and `holdout_days`). The blend chose its weight before, on the training window only, so the holdout
    compares three finished models. Ties go to the kind listed first. A kind whose catalogue is over the EASE memory
    limit is left out (and says so); `params` maps a kind to its parameters."""
    from core.training.models import CatalogueTooLarge
    results, summary = [], []
    for i, kind in enumerate(kinds):
        lo, hi = i / len(kinds), (i + 1) / len(kinds)
        try:
            r = train(settings, kind, seed=seed, params=(params or {}).get(kind), holdout_days=holdout_days,
                      job_id=job_id, at=at, progress=lambda f, m, lo=lo, hi=hi: progress(lo + (hi - lo) * f, m))
        except CatalogueTooLarge as exc:
            summary.append({"model_kind": kind, "run_id": None, "ndcg@10": None, "fit_seconds": None,
                            "chosen": False, "error": str(exc)})
            continue
        results.append(r)
        summary.append({"model_kind": kind, "run_id": r.run_id, "ndcg@10": r.metrics["ndcg@10"],
                        "users_evaluated": r.metrics.get("users_evaluated"), "fit_seconds": r.timings.get("fit"),
                        "chosen": False})
    if not results:
        raise RetroError("no model kind could be trained: " + "; ".join(s["error"] for s in summary))
    best = max(results, key=lambda r: (r.metrics["ndcg@10"], -kinds.index(r.model_kind)))
    for s in summary:
        s["chosen"] = s["run_id"] == best.run_id
    return best, summary


def _estimator_class(settings: Settings, model: str):
    """The estimator of `model` on the settings' engine: `implicit`'s (embedded) or MLlib ALS (spark). EASE and
    the blend get the settings' memory limit for their dense item-item matrices."""
    if settings.engine != "spark":
        if model in DENSE_KINDS:
            return functools.partial(MODELS[model], max_memory_mb=settings.ease_max_memory_mb)
        return MODELS[model]
    if model != "als":
        raise ValidationError(f"the Spark engine trains als only (MLlib ALS), not {model!r}; "
                              "train it with --engine embedded")
    return SparkALSRecommender


def gate_yardstick(settings: Settings, split, estimator, kind: str, params: dict, prod: dict, prod_bundle,
                   prod_scores: dict, top_cols: np.ndarray, seed: int) -> dict:
    """The candidate (fitted on the training window) against production on the holdout days' exploration log.

    Production is its deployed model when its training data ends before the holdout, else its configuration
    refit on the same training window (the same object as the candidate when the configuration is the same:
    then only staleness can promote, as on the holdout). Baselines: popularity and the Top 50 of the cutoff."""
    from core.pseudonym import pseudonym_key
    from core.training import offpolicy
    try:
        log = offpolicy.load_log(settings, split.cutoff.strftime("%Y-%m-%dT%H:%M:%S"),
                                 (split.end.normalize() + pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"))
        if log.n_lists == 0:
            return {"error": "no list with propensities was served in the holdout window"}
        key = pseudonym_key(settings)
        top = offpolicy.RankingPolicy("top50", [int(m) for m in split.train.movie_ids[top_cols]])
        counts = np.asarray((split.train.user_items > 0).sum(axis=0)).ravel()
        popular = offpolicy.RankingPolicy("popularity", [int(m) for m in split.train.movie_ids[np.argsort(
            -counts, kind="stable")]])
        candidate = offpolicy.ModelPolicy("candidate", estimator, split.train, key, top)
        cls = MODELS[prod["model_kind"]]
        prod_params = {k: v for k, v in (prod.get("params") or {}).items() if k in cls().params()}
        if prod_bundle is not None and not prod_scores.get("overlaps_holdout") and "error" not in prod_scores:
            production = offpolicy.ModelPolicy("production", prod_bundle.model, prod_bundle.matrix, key, top)
        elif prod["model_kind"] == kind and prod_params == {k: params.get(k) for k in prod_params}:
            production = offpolicy.ModelPolicy("production", estimator, split.train, key, top)
        else:
            production = offpolicy.ModelPolicy("production", cls(**prod_params).fit(split.train.user_items),
                                               split.train, key, top)
        return offpolicy.yardstick(settings, log, {"candidate": candidate, "production": production,
                                                   "popularity": popular, "top50": top}, seed=seed,
                                   n_boot=settings.gate_bootstrap_resamples)
    except (ValueError, RetroError, OSError) as exc:
        return {"error": f"counterfactual evaluation failed: {exc}"}


# ------------------------------------------------------------------ retrain
@locks.exclusive("retrain")
def retrain(settings: Settings, model: str = "als", *, seed: int | None = None, params: dict | None = None,
            trigger: str = "manual", actor: str = "pipeline", margin: float = GATE_MARGIN,
            holdout_days: int = HOLDOUT_DAYS, progress: Progress = _noop, at: str | None = None,
            with_ranker: bool = True, on_pass: str = "promote", canary: dict | None = None,
            release_with: Callable[..., dict] | None = None) -> dict:
    """ETL → train → evaluate → register → gate → promote or release → (re)train the ranker; returns the job's result.

    The ranker is retrained whenever the CF model changes (a ranker trained on an
    older CF version is stale) or when no ranker serves yet.

    `on_pass`: what a candidate that passed the gate does — "promote" (now) or "canary" (a canary release
    with `canary`'s rules that the release policy promotes or rolls back on its online hit rate; it waits
    while another release runs; the first model is promoted directly). Releases are a stage above training,
    so a passing candidate is handed to `release_with` (`core.monitoring.release.after_gate`, which "canary"
    needs; with it, a direct promotion also ends a running release as a recorded decision). The result's
    `release` says what happened; `promoted` is True only when the candidate is in production now.
    """
    check_on_pass(on_pass, release_with)
    at = at or sim_now(settings)
    job_id = tracking.start_job(settings, "retrain", trigger, at=at)
    stage = "etl"
    try:
        progress(0.0, "ETL: extracting new rows from the operational database")
        tracking.update_job(settings, job_id, stage)
        t = time.perf_counter()
        etl_result = etl.run(settings, at=at)
        etl_seconds = time.perf_counter() - t
        progress(0.25, f"ETL: {etl_result.status}, {etl_result.rows_loaded:,} rows loaded, "
                       f"{etl_result.rows_quarantined:,} quarantined")

        stage = "train"
        tracking.update_job(settings, job_id, stage)
        candidates = None
        if model == BEST:
            trained, candidates = train_best(settings, seed=seed, params=params, holdout_days=holdout_days,
                                             job_id=job_id, at=at, progress=lambda f, m: progress(0.25 + 0.6 * f, m))
        else:
            trained = train(settings, model, seed=seed, params=params, holdout_days=holdout_days, job_id=job_id,
                            at=at, progress=lambda f, m: progress(0.25 + 0.6 * f, m))

        stage = "gate"
        tracking.update_job(settings, job_id, stage)
        version = registry.register(settings, trained.run_id, at=at)
        prod_metrics = gate_reference(trained.baselines)
        decision = gate.evaluate_gate(
            trained.metrics, prod_metrics, has_nan=trained.has_nan, margin=margin,
            baselines={name: trained.baselines[name] for name in gate.BASELINES},
            comparison=trained.comparison, min_users=settings.gate_min_users, stale=trained.staleness,
            same_as_production=trained.same_as_production, yardstick=trained.yardstick,
            min_ess=settings.gate_min_ess, online_check=on_pass == "canary")
        progress(0.9, "gate: " + (("promote" if on_pass == "promote" else "passed → canary") if decision.promote
                                  else "keep the current model"))
        released = None
        if decision.promote:
            stage = "promote" if on_pass == "promote" else "release"
            tracking.update_job(settings, job_id, stage)
            if release_with is None:
                registry.promote(settings, version, actor, f"gate passed ({trigger} retrain)", gate=decision, at=at)
                released = {"mode": "direct", "state": "promoted", "reason": "promoted when the gate passed",
                            "replaced": None}
            else:
                released = release_with(settings, version, on_pass, actor=actor, trigger=trigger, gate=decision,
                                        job_id=job_id, at=at, with_ranker=with_ranker, rules=canary,
                                        progress=lambda f, m: progress(0.9 + 0.03 * f, m))
        promoted = released is not None and released["state"] == "promoted"
        ranker_result = None
        if with_ranker and (promoted or not ranker_status(settings)["active"]):
            stage = "ranker"
            tracking.update_job(settings, job_id, stage)
            progress(0.93, "training the ranker for the production CF model")
            try:
                ranker_result = train_ranker(settings, seed=seed, holdout_days=holdout_days, job_id=job_id, at=at,
                                             cf_on_train_window=trained.estimator if promoted else None)
            except RetroError as exc:   # too little data for a ranker: CF alone serves, and the job says so
                ranker_result = {"error": str(exc)}
        result = {"job_id": job_id, "run_id": trained.run_id, "version": version, "promoted": promoted,
                  "gate": decision.to_dict(), "etl": etl_result.to_dict(), "metrics": trained.metrics,
                  "baselines": trained.baselines, "timings": trained.timings | {"etl": etl_seconds},
                  "data_version": trained.data_version, "trigger": trigger, "ranker": ranker_result,
                  "on_pass": on_pass, "release": released}
        if candidates is not None:         # --model best: every kind's holdout nDCG@10 and fit time, the chosen one
            result |= {"model_kind": trained.model_kind, "candidates": candidates}
        tracking.finish_job(settings, job_id, result, at=at)
        progress(1.0, f"done: v{version} " + release_outcome(result))
        return result
    except Exception as exc:
        tracking.fail_job(settings, job_id, f"{stage}: {type(exc).__name__}: {exc}", at=at)
        raise


ON_PASS = ("canary", "promote")


def check_on_pass(on_pass: str, release_with=None) -> str:
    """`on_pass` when it names what a candidate that passed the gate does (and "canary" has a `release_with`)."""
    if on_pass not in ON_PASS:
        raise ValidationError(f"unknown on_pass {on_pass!r}; choose one of: {', '.join(ON_PASS)}")
    if on_pass == "canary" and release_with is None:
        raise ValidationError("on_pass 'canary' hands the candidate to the release machinery: pass "
                              "release_with=core.monitoring.release.after_gate")
    return on_pass


def release_outcome(result: dict) -> str:
    """What became of a retrain's candidate, in words: 'promoted to production', 'started as canary release #N
    (50 % of users)', 'waits for release #N (canary of vM) to end, then starts as a canary' or 'kept as candidate'."""
    rel = result.get("release")
    if result.get("promoted"):
        return "promoted to production"
    if rel and rel["state"] == "active":
        return f"started as canary release #{rel['deployment_id']} ({rel['share']:.0%} of users)"
    if rel and rel["state"] == "pending":
        w = rel["waits_for"]
        return f"waits for release #{w['deployment_id']} ({w['mode']} of v{w['version']}) to end, then starts as a canary"
    return "kept as candidate"


# ------------------------------------------------------------------ the ranking model
def ranker_status(settings: Settings) -> dict:
    """Production ranker (if any) and whether it is stale: trained on a CF version that no longer serves."""
    cf = registry.production(settings)
    rk = registry.production(settings, family="ranker")
    stale = rk is not None and (cf is None or rk["depends_on"] != cf["version"])
    return {"cf_version": None if cf is None else int(cf["version"]), "ranker": rk, "stale": stale,
            "active": rk is not None and not stale}


@locks.exclusive("ranker training")
def train_ranker(settings: Settings, *, seed: int | None = None, holdout_days: int = HOLDOUT_DAYS,
                 weights: dataset.ConfidenceWeights = dataset.ConfidenceWeights(), job_id: int | None = None,
                 at: str | None = None, progress: Progress = _noop, cf_on_train_window=None,
                 cf_version: int | None = None) -> dict:
    """Train, evaluate, register and (if it beats CF alone) promote a ranker on top of the production CF model.

    `cf_on_train_window`: the production CF configuration already fitted on this split's training
    window (the retrain pipeline passes it to save a fit). `cf_version`: train the ranker of another CF
    version instead (a release's candidate, so both arms of a canary are two-stage): it is registered with
    `depends_on` = that version and stays a candidate; `beats_cf` in its metrics says whether it beat CF alone,
    and a release that promotes the CF version promotes it too (`core.monitoring.release`)."""
    from core.training import ranker as rk
    cf = registry.production(settings) if cf_version is None else registry.get_version(settings, int(cf_version))
    if cf is None:
        raise RetroError("the ranker re-ranks the production CF model's candidates: promote a CF model first")
    if cf["family"] != registry.CF:
        raise ValidationError(f"v{cf['version']} is a {cf['family']} model; a ranker re-ranks a CF model's candidates")
    seed = settings.seed if seed is None else int(seed)
    at = at or sim_now(settings)
    cf_cls = MODELS[cf["model_kind"]]
    cf_params = {k: v for k, v in (cf["params"] or {}).items() if k in cf_cls().params()}
    data_version = current_data_version(settings)
    run_id = tracking.start_run(settings, "ranker", {"candidates": rk.CANDIDATES, "features": list(rk.FEATURES),
                                                     "cf_version": int(cf["version"]), "holdout_days": holdout_days},
                                seed, data_version, job_id=job_id, at=at)
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        progress(0.0, "ranker: building the label window")
        split = holdout_split(settings, holdout_days, weights)
        c2 = split.cutoff
        c1 = c2 - pd.Timedelta(days=holdout_days)
        pairs_a = dataset.interactions(settings, None, c1, weights)
        label_pairs = dataset.interactions(settings, c1, c2, weights)
        mat_a = dataset.to_matrix(pairs_a, movie_ids=split.train.movie_ids)
        uidx, iidx = mat_a.user_index, mat_a.item_index
        rel_a: dict[int, set] = {}
        for key, movie in zip(label_pairs["user_key"], label_pairs["movie_id"]):
            r, c = uidx.get(key), iidx.get(int(movie))
            if r is not None and c is not None and mat_a.user_items[r, c] == 0:
                rel_a.setdefault(r, set()).add(c)
        users_a = np.array(sorted(rel_a), dtype=np.int64)
        if not len(users_a):
            raise RetroError("no user interacted in the ranker's label window; simulate more days")
        timings["labels"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.3, f"ranker: candidates from {cf['model_kind']} for {len(users_a):,} users, fitting the ranker")
        cf_a = cf_cls(**cf_params).fit(mat_a.user_items)
        items_a, scores_a = rk.candidates(cf_a, users_a, mat_a.user_items)
        ctx_a = rk.build_context(settings, mat_a, pairs_a, c1)
        X = rk.feature_rows(ctx_a, users_a, items_a, scores_a)
        y = rk.labels_for(items_a, users_a, rel_a)
        keep = items_a.ravel() >= 0
        model = rk.fit_ranker(X[keep], y[keep], seed)
        timings["fit"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.6, "ranker: two-stage vs CF alone on the holdout")
        pairs_b = dataset.interactions(settings, None, c2, weights)
        cf_b = cf_on_train_window or cf_cls(**cf_params).fit(split.train.user_items)
        users_b = np.array(sorted(split.holdout), dtype=np.int64)
        items_b, scores_b = rk.candidates(cf_b, users_b, split.train.user_items)
        ranked_b, _ = rk.Ranker(model, rk.build_context(settings, split.train, pairs_b, c2)).rerank(
            users_b, items_b, scores_b, DEFAULT_K)
        two_stage = score_lists(ranked_b, split, users_b, DEFAULT_K)
        cf_only = score_lists(items_b[:, :DEFAULT_K], split, users_b, DEFAULT_K)
        timings["evaluate"] = time.perf_counter() - t

        t = time.perf_counter()
        bundle = load_bundle(cf["artifact_path"])
        all_pairs = dataset.interactions(settings, None, None, weights)
        ctx_full = rk.build_context(settings, bundle.matrix, all_pairs, pd.Timestamp(bundle.meta["trained_until"]))
        path = private_dir(settings.models_dir) / f"ranker-run-{run_id}"
        ranges = {name: [float(np.nanpercentile(X[keep][:, i], 1)), float(np.nanpercentile(X[keep][:, i], 99))]
                  for i, name in enumerate(rk.FEATURES)}
        meta = {"run_id": run_id, "cf_version": int(cf["version"]), "seed": seed, "data_version": data_version,
                "label_window": [str(c1), str(c2)], "feature_ranges": ranges, "trained_until": bundle.meta["trained_until"],
                "code_version": tracking.code_version(), "rows": int(keep.sum()), "positives": int(y[keep].sum())}
        digest = rk.save_ranker(path, rk.Ranker(model, ctx_full), meta)
        timings["save"] = time.perf_counter() - t
        metrics = two_stage | {"cf_only_ndcg@10": cf_only["ndcg@10"], "cf_only_hit_rate@10": cf_only["hit_rate@10"],
                               "training_rows": int(keep.sum()), "positives": int(y[keep].sum()),
                               "beats_cf": bool(two_stage["ndcg@10"] > cf_only["ndcg@10"])}
        tracking.finish_run(settings, run_id, metrics, {"cf_only": cf_only}, timings, str(path), digest, at=at)
    except Exception as exc:
        tracking.fail_run(settings, run_id, f"{type(exc).__name__}: {exc}", at=at)
        raise
    version = registry.register(settings, run_id, at=at, depends_on=int(cf["version"]), family="ranker")
    better = two_stage["ndcg@10"] > cf_only["ndcg@10"]
    reasons = [f"two-stage ndcg@10 {two_stage['ndcg@10']:.4f} {'>' if better else '≤'} CF alone {cf_only['ndcg@10']:.4f} "
               f"on the same holdout and candidates"]
    promoted = better and cf["stage"] == "production"
    if promoted:
        registry.promote(settings, version, "pipeline", "ranker beats CF alone on the holdout",
                         gate={"promote": True, "reasons": reasons, "checks": {}}, at=at)
    progress(1.0, "ranker: " + ("promoted" if promoted else "kept as candidate" + (
        "" if better else " (CF alone serves)")))
    return {"run_id": run_id, "version": version, "promoted": promoted, "reasons": reasons, "metrics": metrics,
            "cf_version": int(cf["version"])}
