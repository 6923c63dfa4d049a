"""Engines: where passes run. `local` loops over shards in one process; `ray` runs the same
`Scorer` as Ray Data actors (engine/ray.py). `thresher.runner.PassRunner` picks one from the run
config for every pass of a run."""
