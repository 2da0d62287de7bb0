"""The level-5 model: an isolation forest trained offline, versioned, evaluated with numpy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from mdstream.core.config import PipelineConfig
from mdstream.core.instruments import REFERENCE_FILE, load_master
from mdstream.core.processor import StepOutput, process_batch
from mdstream.core.quality import reliability
from mdstream.core.quality.checks import Check, names
from mdstream.core.quality.model import features, load_model, model_version, save, train

S = 1_000_000_000
MS = 1_000_000
T = 1_764_000_000 * S


def _normal_trades(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = T + np.cumsum(rng.exponential(25 * MS, n)).astype(np.int64)
    price = np.round(100 * np.exp(np.cumsum(rng.normal(0, 2e-5, n))), 2)
    size = np.maximum(1, np.round(rng.lognormal(4, 1, n)))
    return ts, price, size


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ts, price, size = _normal_trades(20_000)
    model = train(features(ts, price, size), group="test", window={"from": int(ts[0])})
    return save(model, tmp_path_factory.mktemp("models"))


def test_numpy_inference_equals_sklearn() -> None:
    ts, price, size = _normal_trades(5_000)
    x = features(ts, price, size)
    model = train(x, group="g", window={"w": 1}, n_estimators=30, random_state=4)
    forest = IsolationForest(n_estimators=30, max_samples=256, random_state=4).fit(x)
    probe = np.vstack([x[:500], x[:50] * [100, 1, 1], x[:50] * [1, 3, 0.1]])
    np.testing.assert_allclose(model.score_samples(probe), forest.score_samples(probe), rtol=1e-12)
    # The threshold is the contamination quantile of the training scores.
    assert np.mean(model.score_samples(x) < model.threshold_score) == pytest.approx(0.001, abs=5e-4)


def test_version_is_a_hash_of_params_and_training_window(model_path: Path) -> None:
    model = load_model(str(model_path))
    assert model_path.name == f"test-{model.version}.npz"
    assert model.meta["training_window"] == {"from": int(_normal_trades(20_000)[0][0])}
    assert model.meta["params"]["random_state"] == 0
    v = model_version(model.meta["params"], model.meta["training_window"])
    assert v == model.version
    assert model_version(model.meta["params"], {"from": 0}) != v
    # Training twice on the same window gives the same model: fixed random_state.
    ts, price, size = _normal_trades(20_000)
    again = train(features(ts, price, size), group="test", window={"from": int(ts[0])})
    np.testing.assert_array_equal(again.threshold, model.threshold)
    assert again.threshold_score == model.threshold_score


def _with_models(*models: tuple[str, str]) -> PipelineConfig:
    return dataclasses.replace(
        PipelineConfig(), quality=dataclasses.replace(PipelineConfig().quality, models=models)
    )


def _abnormal_session(cfg: PipelineConfig) -> tuple[list[int], StepOutput]:
    """400 normal AAPL trades in batches of 20, with one abnormal block trade (index 300)."""
    ts, price, size = _normal_trades(400, seed=9)
    # After 30 s of silence, a block a hundred thousand times the usual size: abnormal on two
    # features at once (one alone is within what an isolation forest calls normal here).
    size[300] = 5_000_000
    ts[300:] += 30 * S
    state: dict[str, Any] = {}
    out = StepOutput()
    batches = []
    for k in range(0, 400, 20):
        b = {
            "batchId": f"00000000-0000-0000-0000-{k:012d}",
            "timestamp": int(ts[k + 19]) + 5 * MS,
            "source": "alpaca",
            "instrument": {"symbol": "AAPL", "exchange": "XNAS", "isin": None},
            "ticks": [
                {"kind": "TRADE", "timestamp": int(ts[i]), "provider_timestamp": int(ts[i]),
                 "price": float(price[i]), "volume": float(size[i]), "bid": None, "ask": None,
                 "sequence": None, "conditions": None}
                for i in range(k, k + 20)
            ],
        }  # fmt: skip
        batches.append(b)
        out.add(process_batch(b, state, 0, cfg, emitted_ns=0))
    return [f for b in batches for f in out.tick_quality[b["batchId"]]["flags"]], out


def test_the_pipeline_flags_abnormal_trades_with_the_model(model_path: Path) -> None:
    flags, out = _abnormal_session(_with_models(("*", str(model_path))))
    flagged = [i for i, f in enumerate(flags) if f & int(Check.MODEL_ANOMALY)]
    assert 300 in flagged
    assert len(flagged) <= 3  # the odd normal trade at most
    assert "MODEL_ANOMALY" in names(flags[300])
    # A model flag informs (lineage, flags) but does not exclude: the block trade is in a bar.
    assert not flags[300] & int(Check.CROSS_SOURCE_OUTLIER | Check.STATISTICAL_OUTLIER)
    bar_checks = {c for b in out.bars for c in b["lineage"]["checks_passed"]}
    assert "model" in bar_checks
    assert {b["lineage"]["quality_model"] for b in out.bars} == {str(model_path)}


def test_a_model_applies_to_its_instrument_group_only(model_path: Path) -> None:
    """AAPL is an EQUITY in the master: a model trained for ETFs is not applied to it."""
    cfg = dataclasses.replace(
        _with_models(("ETF", str(model_path))), instruments=load_master(REFERENCE_FILE)
    )
    flags, out = _abnormal_session(cfg)
    assert not any(f & int(Check.MODEL_ANOMALY) for f in flags)
    assert {b["lineage"]["quality_model"] for b in out.bars} == {None}
    equity = dataclasses.replace(cfg, quality=_with_models(("EQUITY", str(model_path))).quality)
    flags, _ = _abnormal_session(equity)
    assert flags[300] & int(Check.MODEL_ANOMALY)


def test_sla_by_provider_sums_instruments() -> None:
    a, b = reliability.new(), reliability.new()
    for rel, errors in ((a, 0), (b, 10)):
        reliability.observe_time(rel, 0, True, 300 * S)
        reliability.observe_time(rel, 10 * S, True, 300 * S)
        reliability.observe_ticks(rel, 100, errors, 100 * 20.0, 100.0 - errors, 100 - errors)
    states = {
        "AAPL": {"providers": {"alpaca": {"rel": a}, "finnhub": {"rel": b}}},
        "MSFT": {"providers": {"finnhub": {"rel": dict(b)}}},
    }
    table = reliability.sla_by_provider(states, 250.0, 5000.0)
    assert list(table) == ["alpaca", "finnhub"]
    assert table["finnhub"]["instruments"] == 2 and table["finnhub"]["ticks"] == 200
    assert table["finnhub"]["error_rate"] == pytest.approx(0.1)
    assert table["alpaca"]["reliability"] > table["finnhub"]["reliability"]
