"""Engines: where passes run. `local` loops over shards in one process; `ray` runs the same
`Scorer` as Ray Data actors (engine/ray.py). `run_on_engine` picks one from a run config, for the
pipeline's passes and for the passes a method runs while preparing (NAIT's target sets,
InstructDiff's earlier rounds) alike."""

from __future__ import annotations

from typing import Any


def run_on_engine(cfg: Any, samples: list[Any], scorer: Any, store: Any, **pass_args: Any) -> Any:
    """`run_pass` on `cfg.score.engine` (a `RunConfig`); returns its `PassResult`."""
    if cfg.score.engine == "ray":
        from thresher.engine.ray import ModelLoad, RayOptions, run_pass_ray
        from thresher.models import detect_hardware, resolve_precision

        m, sc, name = cfg.model, cfg.score, scorer.spec.model
        # resolved here, so every worker runs in the precision the cache key was made with
        p = resolve_precision(
            m.dtype, m.device, reproduce=cfg.method.reproduce, hardware=detect_hardware()
        )
        load = ModelLoad(
            name,
            p.dtype,
            p.device,
            m.revision if name == m.name else None,
            m.trust_remote_code,
            m.threads,
        )
        return run_pass_ray(
            samples,
            scorer,
            store,
            load,
            RayOptions(sc.ray_concurrency, sc.ray_num_gpus, sc.ray_num_cpus, sc.ray_batch_size),
            **pass_args,
        )
    from thresher.engine.local import run_pass

    return run_pass(samples, scorer, store, **pass_args)
