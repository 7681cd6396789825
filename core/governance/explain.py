"""'Why was this movie recommended?' — per-recommendation explanations.

Two models contribute: the collaborative-filtering model (ALS's own
decomposition of a score into the user's past titles: "because you watched X,
Y") and, when it serves, the ranker (SHAP values per interpretable feature,
with base + Σ SHAP = the ranker's log-odds). The explanation also says whether,
when, where and by which model/data version the title was actually served.
"""
from __future__ import annotations

import json

import numpy as np

from core.store import opsdb, servinglog
from core.training import registry
from core.errors import RetroError, UnknownMovie
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings
from core.text import percent_chance


def _titles(db, ids) -> dict:
    return {m: f"{t} ({y})" if y else t for m, (t, y) in opsdb.titles(db, ids).items()}


def _served_fact(db, user_id: int, movie_id: int) -> dict | None:
    for serve_id, at, path, mv, rv, dv, ids in servinglog.recent_lists(db, user_id, 500):
        ids = json.loads(ids)
        if movie_id in ids:
            return {"serve_id": serve_id, "served_at": at, "position": ids.index(movie_id) + 1, "path": path,
                    "model_version": mv, "ranker_version": rv, "data_version": dv}
    return None


def _context(settings: Settings, user_id: int):
    from core.serving.serving import bundle_for, ops_connection, ranker_for
    db = ops_connection(settings)
    opsdb.require_user(db, user_id, None)
    prod = registry.production(settings)
    if prod is None:
        raise RetroError("no model in production yet: recommendations come from the Top 50, which needs no explanation "
                         "beyond its formula")
    bundle = bundle_for(prod)
    row = bundle.user_row.get(pseudonym(int(user_id), pseudonym_key(settings)))
    ranker, ranker_version = ranker_for(int(prod["version"]), settings)
    return db, prod, bundle, row, ranker, ranker_version


def explain_many(settings: Settings, user_id: int, movie_ids: list[int], n_because: int = 3) -> list[dict]:
    """Explanations for several movies of one user at once (one SHAP call for all of them)."""
    from core.training.ranker import CANDIDATES, FEATURE_LABELS, FEATURES, feature_rows
    db, prod, bundle, row, ranker, ranker_version = _context(settings, user_id)
    movie_ids = [int(m) for m in movie_ids]
    unknown = [m for m in movie_ids if m not in bundle.item_col]
    if unknown:
        raise UnknownMovie(f"unknown movie {unknown[0]} (not in the production model's catalog)")
    if row is None:
        raise RetroError(f"user {user_id} is a cold-start user for model v{prod['version']}: they are served the Top 50, "
                         "ranked by weighted rating, not a personalized list")
    ui = bundle.matrix.user_items
    cols = np.array([bundle.item_col[m] for m in movie_ids])
    model = bundle.model
    cf_scores = model.score_items(row, cols, ui)
    because = []
    for c in cols:
        if hasattr(model, "explain_score"):
            _, contrib = model.explain_score(row, ui, int(c), n=n_because)
        else:   # BPR: the user's titles whose item factors are closest to this one
            own = ui.indices[ui.indptr[row]:ui.indptr[row + 1]]
            sims = model.item_factors_[own] @ model.item_factors_[c]
            top = np.argsort(-sims)[:n_because]
            contrib = [(int(own[t]), float(sims[t])) for t in top]
        because.append(contrib)
    names = _titles(db, movie_ids + [int(bundle.matrix.movie_ids[i]) for b in because for i, _ in b])
    shap_rows = None
    if ranker is not None:
        cand, cand_scores = model.recommend(np.array([row]), ui, CANDIDATES, filter_seen=True)
        ranks = {int(c): r + 1 for r, c in enumerate(cand[0]) if c >= 0}
        X = np.vstack([feature_rows(ranker.context, np.array([row]), np.array([[c]]), np.array([[s]]))
                       for c, s in zip(cols, cf_scores)])
        X[:, FEATURES.index("cf_rank")] = [ranks.get(int(c), CANDIDATES + 1) for c in cols]
        values, base, output = ranker.explain(X)
        shap_rows = (X, values, base, output)
    out = []
    for i, (m, c) in enumerate(zip(movie_ids, cols)):
        items = [{"movie_id": int(bundle.matrix.movie_ids[j]), "title": names.get(int(bundle.matrix.movie_ids[j])),
                  "contribution": round(v, 6)} for j, v in because[i]]
        exp = {"user_id": int(user_id), "movie_id": m, "title": names.get(m), "cf_model_version": int(prod["version"]),
               "cf_model_kind": prod["model_kind"], "data_version": prod["data_version"], "cf_score": float(cf_scores[i]),
               "because_you_watched": items, "ranker": None, "served": _served_fact(db, int(user_id), m)}
        if shap_rows is not None:
            X, values, base, output = shap_rows
            feats = [{"feature": f, "label": FEATURE_LABELS[f], "value": float(X[i, j]), "shap": float(values[i, j])}
                     for j, f in enumerate(FEATURES)]
            exp["ranker"] = {"version": ranker_version, "base_value": base, "output": float(output[i]),
                             "probability": float(1 / (1 + np.exp(-output[i]))), "features": feats}
        exp["text"] = _paragraph(exp)
        out.append(exp)
    return out


def explain(settings: Settings, user_id: int, movie_id: int) -> dict:
    return explain_many(settings, user_id, [movie_id])[0]


def explain_list(settings: Settings, user_id: int, k: int = 10) -> list[dict]:
    """Explanations for the user's current list (not logged as a new serving)."""
    from core.serving.serving import recommend
    rec = recommend(settings, user_id, k, log=False)
    if rec.path != "model":
        raise RetroError(f"user {user_id} gets the Top 50 ({rec.reason}); there is no personalized list to explain")
    return explain_many(settings, user_id, rec.movie_ids)


def _paragraph(e: dict) -> str:
    because = [b["title"] for b in e["because_you_watched"] if b["contribution"] > 0][:2]
    text = f"We suggested {e['title']}"
    text += (" because you watched " + " and ".join(because) if because else
             " because viewers with a history like yours liked it")
    text += f" (collaborative filtering, model v{e['cf_model_version']}, score {e['cf_score']:.3f})."
    r = e.get("ranker")
    if r:
        feats = sorted(r["features"], key=lambda f: -abs(f["shap"]))[:2]
        words = [f"{f['label']} ({'+' if f['shap'] > 0 else '−'}{abs(f['shap']):.2f})" for f in feats]
        text += (f" The ranking model v{r['version']} then placed it using mostly {' and '.join(words)}; "
                 f"it estimates {percent_chance(r['probability'])} you will watch it.")
    s = e.get("served")
    if s:
        text += (f" It was shown to you on {s['served_at'][:10]} at position {s['position']}, by model "
                 f"v{s['model_version']}" + (f" and ranker v{s['ranker_version']}" if s["ranker_version"] else "")
                 + f", trained on data {s['data_version']}.")
    else:
        text += " It has not been shown to you yet."
    return text


def explanation_markdown(e: dict) -> str:
    lines = [f"# Why {e['title']} for user {e['user_id']}", "", e["text"], "", "## Collaborative filtering",
             f"Model v{e['cf_model_version']} ({e['cf_model_kind']}), data {e['data_version']}, score {e['cf_score']:.4f}.",
             "", "| because you watched | contribution |", "| --- | ---: |"]
    lines += [f"| {b['title']} | {b['contribution']:.4f} |" for b in e["because_you_watched"]]
    if e["ranker"]:
        r = e["ranker"]
        lines += ["", "## Ranking model (SHAP, log-odds)", f"Ranker v{r['version']}: base value {r['base_value']:.4f} "
                  f"+ Σ SHAP = output {r['output']:.4f} (probability {r['probability']:.1%}).", "",
                  "| feature | value | SHAP |", "| --- | ---: | ---: |"]
        lines += [f"| {f['label']} | {f['value']:.4f} | {f['shap']:+.4f} |" for f in r["features"]]
    if e["served"]:
        s = e["served"]
        lines += ["", "## Served", f"On {s['served_at']} at position {s['position']} ({s['path']}), model v{s['model_version']}"
                  + (f", ranker v{s['ranker_version']}" if s["ranker_version"] else "") + f", data {s['data_version']}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ "why is this user at risk?" (the churn model)
def explain_churn(settings: Settings, user_id: int) -> dict:
    """The production churn model's risk for one user with every feature's SHAP contribution to its calibrated
    log-odds (`churn_pipeline.explain_user`: base + Σ contributions = logit(risk)), the version's stage and its
    staleness against the recommender. A user who is not active at the scoring date gets `active` False and a
    `note` (no score). Raises UnknownUser for an unknown id and RetroError when no churn model is in production."""
    from core.training import churn_pipeline
    result = churn_pipeline.explain_user(settings, int(user_id))
    result["model_status"] = {k: v for k, v in churn_pipeline.status(settings).items() if k in ("stale", "reasons")}
    if result["active"]:
        result["additivity"] = {"base_logit": result["base_logit"],
                                "sum_contributions": float(sum(c["contribution"] for c in result["contributions"])),
                                "logit": result["logit"]}
    return result


def churn_explanation_markdown(e: dict) -> str:
    """A churn explanation for people: the risk, the model, the reasons, and every contribution, biggest first."""
    as_of = str(e["as_of"])[:10]
    lines = [f"# Why is user {e['user_id']} at risk of leaving?", ""]
    if not e["active"]:
        return "\n".join(lines + [e["note"]]) + "\n"
    a = e["additivity"]
    lines += [f"Churn risk **{e['risk']:.1%}** — the chance of no watch in the 14 days from {as_of} — by churn "
              f"model v{e['version']} (in production), features as of {as_of}.", ""]
    status = e.get("model_status") or {}
    if status.get("stale"):
        lines += ["⚠ The model may be stale: " + "; ".join(status["reasons"]), ""]
    lines += ["## Main reasons", ""] + [f"- {r}" for r in e["reasons"]]
    lines += ["", "## Every feature (SHAP, calibrated log-odds)", "",
              f"Base value {a['base_logit']:+.4f} + Σ contributions {a['sum_contributions']:+.4f} = "
              f"{a['base_logit'] + a['sum_contributions']:+.4f} = logit(risk) {a['logit']:+.4f}.", "",
              "| feature | value | contribution |", "| --- | ---: | ---: |"]
    for c in e["contributions"]:
        value = "unknown" if c["value"] is None else f"{c['value']:g}"
        lines.append(f"| {c['label']} | {value} | {c['contribution']:+.4f} |")
    return "\n".join(lines) + "\n"
