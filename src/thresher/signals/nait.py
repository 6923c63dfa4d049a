"""NAIT (Neuron-Aware data selection for Instruction Tuning, ICLR 2026): project each candidate's
activation drift on the directions an in-domain reference set moves the model along.

Inputs are per-layer drifts [n, width]: a sequence's token-mean state minus its first token's
state (the pass's `drift` pool, METHODS §5.3 reading (a)). `fit` runs on the in-domain drifts,
`score` on the candidates'; both are pure numpy, so the fit is a reduction over small tables
whatever engine produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Directions:
    """Per layer: `components` [k, width] (rows are unit vectors) and the in-domain `centroid`
    of the drifts [width]. With k = 1 the component is sign-calibrated (camera-ready form)."""

    components: dict[str, np.ndarray]
    centroid: dict[str, np.ndarray]


def fit_directions(drifts: dict[str, np.ndarray], n_components: int = 1) -> Directions:
    """Principal components of the in-domain drifts of each layer.

    Camera-ready (METHODS §5.3): v_l = first principal component of the centred drifts; if
    mean_i(drift_i) . v_l < 0, flip v_l, so the mean in-domain projection is >= 0. Rows holding
    NaN (samples that could not be scored) are left out of the fit.
    """
    if n_components < 1:
        raise ValueError(f"n_components={n_components}: expected at least 1 principal component")
    comps, cents = {}, {}
    for name, x in drifts.items():
        x = np.asarray(x, dtype=np.float64)
        x = x[np.all(np.isfinite(x), axis=1)]
        if len(x) < 2:
            raise ValueError(
                f"layer {name}: {len(x)} in-domain drifts are finite; a principal component needs at "
                "least 2. Give a larger target set (NAIT: 16 examples already beat random)."
            )
        if n_components > min(x.shape):
            raise ValueError(
                f"n_components={n_components} exceeds min(samples, width) = {min(x.shape)} for layer {name}"
            )
        mu = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
        v = vt[:n_components].copy()
        if n_components == 1 and float(mu @ v[0]) < 0:
            v[0] = -v[0]
        comps[name], cents[name] = v, mu
    return Directions(comps, cents)


def layer_projections(
    drifts: dict[str, np.ndarray], d: Directions, form: str = "pc1"
) -> dict[str, np.ndarray]:
    """Each candidate's score per layer.

    `pc1` (camera-ready): drift . v_l. `centroid` (submission, §5.2 step 4-5): the candidate's
    coordinates in the layer's top-d PCA basis dotted with the in-domain centroid's coordinates,
    (x V^T) . (mu V^T). It is not centred: centring with the in-domain mean would make the
    centroid 0. It needs no sign calibration (a flipped axis flips both factors).
    """
    if form not in ("pc1", "centroid"):
        raise ValueError(f"form={form!r} is not one of ['pc1', 'centroid']")
    missing = [k for k in d.components if k not in drifts]
    if missing:
        raise KeyError(f"candidate drifts lack the layers {missing} the directions were fitted on")
    out = {}
    for name, v in d.components.items():
        x = np.asarray(drifts[name], dtype=np.float64)
        if form == "pc1":
            out[name] = x @ v[0]
        else:
            out[name] = (x @ v.T) @ (v @ d.centroid[name])
    return out


def zscore(values: np.ndarray) -> np.ndarray:
    """(v - mean) / std over the finite values (population std); NaN stays NaN. A constant
    column carries no ranking information and maps to 0."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, np.nan)
    if not ok.any():
        return out
    mu, sd = v[ok].mean(), v[ok].std()
    out[ok] = (v[ok] - mu) / sd if sd > 0 else 0.0
    return out


def sum_layers(per_layer: dict[str, np.ndarray], layer_scale: str = "none") -> np.ndarray:
    """s(y) = sum over layers of the projections. `none` sums raw projections (camera-ready;
    later layers have larger norms and dominate); `zscore` standardises each layer over the pool
    first. A row with NaN in any layer is NaN."""
    if layer_scale not in ("none", "zscore"):
        raise ValueError(f"layer_scale={layer_scale!r} is not one of ['none', 'zscore']")
    if not per_layer:
        raise ValueError("no layers to sum: fit the directions on at least one layer")
    cols = [
        zscore(p) if layer_scale == "zscore" else np.asarray(p, dtype=np.float64)
        for p in per_layer.values()
    ]
    return np.sum(np.stack(cols), axis=0)


def combine_targets(scores: list[np.ndarray]) -> np.ndarray:
    """Several capabilities (NAIT's "System 12"): z-normalise each target's scores over the pool
    and add them (METHODS §5.4 resolution). One target returns its scores unchanged."""
    if not scores:
        raise ValueError("no target scores to combine")
    if len(scores) == 1:
        return np.asarray(scores[0], dtype=np.float64)
    return np.sum(np.stack([zscore(s) for s in scores]), axis=0)
