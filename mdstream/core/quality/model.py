"""Level-5 model check: an isolation forest over trade features, trained offline per instrument
group, versioned, and evaluated in the pipeline with plain numpy.

Features per trade: |log return| against the feed's previous trade, log(1 + size), and
log(1 + inter-arrival ms). (No spread: the trades we score and the real tick files we train on
carry no quote.) Training is scikit-learn's IsolationForest with a fixed `random_state`; the
fitted trees are then flattened into arrays, so inference is a few vectorised gathers per batch
(no joblib dispatch per call), deterministic, and needs no pickle: the model file is an `.npz`
of arrays plus its metadata. The version id is a hash of the parameters and the training window.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ("abs_log_return", "log1p_size", "log1p_interarrival_ms")


def features(
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    prev_ts: int | None = None,
    prev_price: float | None = None,
) -> np.ndarray:
    """(n, 3) feature matrix of consecutive trades of one feed."""
    if not len(ts):
        return np.zeros((0, len(FEATURES)))
    p0 = prev_price if prev_price else price[0]
    t0 = prev_ts if prev_ts else ts[0]
    prev_p = np.concatenate(([p0], price[:-1]))
    prev_t = np.concatenate(([t0], ts[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.abs(np.log(price / prev_p))
    gap_ms = np.maximum(ts - prev_t, 0) / 1e6
    return np.column_stack((np.nan_to_num(ret), np.log1p(size), np.log1p(gap_ms)))


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): expected path length of an unsuccessful search in a BST of n items (Liu et al.)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True)
class AnomalyModel:
    """A fitted isolation forest as flat arrays: node i of every tree lives at index i."""

    roots: np.ndarray  # (trees,) index of each tree's root
    left: np.ndarray  # child indices (global), -1 at leaves
    right: np.ndarray
    feature: np.ndarray  # global feature index per node
    threshold: np.ndarray
    leaf_depth: np.ndarray  # depth + c(samples at the node) - 1: the path length ending there
    max_depth: int
    norm: float  # trees × c(max_samples)
    threshold_score: float  # score_samples below this is an anomaly
    meta: Mapping[str, Any]

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """sklearn's IsolationForest.score_samples (the lower, the more abnormal)."""
        x = np.asarray(x, dtype=np.float32)
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(self.max_depth):
            inner = self.left[node] >= 0
            if not inner.any():
                break
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        depth = self.leaf_depth[node].sum(axis=1)
        return -(2.0 ** (-depth / self.norm))

    def flag(
        self,
        ts: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        prev_ts: int | None,
        prev_price: float | None,
    ) -> np.ndarray:
        return self.score_samples(features(ts, price, size, prev_ts, prev_price)) < (
            self.threshold_score
        )


def model_version(params: Mapping[str, Any], window: Mapping[str, Any]) -> str:
    blob = json.dumps({"params": params, "window": window}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train(
    x: np.ndarray,
    *,
    group: str,
    window: Mapping[str, Any],
    n_estimators: int = 50,
    max_samples: int = 256,
    contamination: float = 0.001,
    random_state: int = 0,
) -> AnomalyModel:
    """Fit on `x` (rows from `features`) and flatten; `window` says what data it saw."""
    from sklearn.ensemble import IsolationForest  # training only: the pipeline needs numpy

    params = {
        "features": FEATURES,
        "n_estimators": n_estimators,
        "max_samples": max_samples,
        "contamination": contamination,
        "random_state": random_state,
    }
    forest = IsolationForest(
        n_estimators=n_estimators, max_samples=max_samples, random_state=random_state
    ).fit(x)
    roots, left, right, feature, threshold, leaf_depth = [], [], [], [], [], []
    base, max_depth = 0, 0
    for tree, feats in zip(forest.estimators_, forest.estimators_features_, strict=True):
        t = tree.tree_
        inner = t.children_left >= 0
        roots.append(base)
        left.append(np.where(inner, t.children_left + base, -1))
        right.append(np.where(inner, t.children_right + base, -1))
        feature.append(np.where(inner, np.asarray(feats)[np.maximum(t.feature, 0)], 0))
        threshold.append(t.threshold)
        leaf_depth.append(t.compute_node_depths() + _average_path_length(t.n_node_samples) - 1.0)
        base += t.node_count
        max_depth = max(max_depth, int(t.max_depth))
    model = AnomalyModel(
        roots=np.asarray(roots, dtype=np.int64),
        left=np.concatenate(left).astype(np.int64),
        right=np.concatenate(right).astype(np.int64),
        feature=np.concatenate(feature).astype(np.int64),
        threshold=np.concatenate(threshold),
        leaf_depth=np.concatenate(leaf_depth),
        max_depth=max_depth,
        norm=float(n_estimators * _average_path_length(np.array([forest.max_samples_]))[0]),
        threshold_score=0.0,
        meta={},
    )
    cut = float(np.quantile(model.score_samples(x), contamination))
    meta = {
        "group": group,
        "version": model_version(params, window),
        "params": params,
        "training_window": dict(window),
        "training_rows": len(x),
        "sklearn_version": __import__("sklearn").__version__,
    }
    return AnomalyModel(**{**model.__dict__, "threshold_score": cut, "meta": meta})


def save(model: AnomalyModel, directory: Path) -> Path:
    """`<directory>/<group>-<version>.npz`: the arrays and the metadata as JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model.meta['group']}-{model.version}.npz"
    arrays = {k: getattr(model, k) for k in ("roots", "left", "right", "feature", "threshold",
                                              "leaf_depth")}  # fmt: skip
    scalars = {"max_depth": model.max_depth, "norm": model.norm,
               "threshold_score": model.threshold_score, "meta": model.meta}  # fmt: skip
    np.savez(path, **arrays, scalars=np.array(json.dumps(scalars)))
    return path


@lru_cache(maxsize=4)
def load_model(path: str) -> AnomalyModel:
    """The model at `path` (cached: the pipeline asks once per batch)."""
    with np.load(path, allow_pickle=False) as data:
        scalars = json.loads(str(data["scalars"]))
        return AnomalyModel(
            roots=data["roots"], left=data["left"], right=data["right"],
            feature=data["feature"], threshold=data["threshold"],
            leaf_depth=data["leaf_depth"], max_depth=int(scalars["max_depth"]),
            norm=float(scalars["norm"]), threshold_score=float(scalars["threshold_score"]),
            meta=scalars["meta"],
        )  # fmt: skip
