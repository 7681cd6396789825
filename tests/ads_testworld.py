"""One small world with ads and an ads model in production, built once per test process and shared (read-only;
a test that writes takes a `private_copy`): seed 21, 300 users, 200 movies, 10 days, a CF version promoted, 6
closed-loop days (ads chosen by campaign rate), the ads model trained and promoted by hand (its gate cannot pass
on a world this small), then one open-loop day whose ads the model chose, loaded by the ETL."""
from __future__ import annotations

from pathlib import Path

from core.settings import load_settings

_built: dict = {}


def ads_world(base: Path):
    """The settings of the shared world (built under `base` on the first call)."""
    if "settings" in _built:
        return _built["settings"]
    from core.ads import pipeline, scoring
    from core.simulation import ads_day, loop, simulation
    from core.training import pipeline as cf_pipeline, registry
    from core.warehouse import etl
    s = load_settings(base)
    simulation.init_world(s, seed=21, users=300, movies=200, days=10)
    result = cf_pipeline.retrain(s, with_ranker=False)
    if not result["promoted"]:
        registry.promote(s, result["version"], "test", "small world: promoted by hand")
    loop.run(s, 6)
    ads = pipeline.train(s, at="2026-01-17T00:00:00")
    if not ads["promoted"]:
        registry.promote(s, ads["version"], "test", "small world: promoted by hand")
    score = scoring.scorer(s)
    simulation.simulate(s, 1, ad_policy=ads_day.AdPolicy("model", score, score.model_version))
    etl.run(s)
    _built["settings"] = s
    _built["ads_version"] = ads["version"]
    return s
