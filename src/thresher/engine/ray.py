"""Ray engine: the same `Scorer` runs as Ray Data actors; the driver commits the shards.

The driver renders every sample (the tokenizer is cheap), cuts the unfinished samples into
the same (length, id)-sorted shards as the local engine (`plan_shards`), and hands Ray Data
one row per shard. `map_batches` runs `ScorerActor` (a callable class: the model loads once
per actor, then `Scorer.score_rendered` scores whole shards) with `concurrency` actors,
`num_gpus` each and `batch_size` shards per call. The actors return each shard in the stored
layout; only the driver writes, through the same `PassStore` commit protocol (temp file,
fsync, rename, marker) as the local engine.

Why the driver writes: Ray retries actor tasks at least once ("this exception may be thrown
even though the task did indeed execute successfully", Ray fault-tolerance docs), so a worker
that committed shards itself could commit one twice, or leave a shard behind after its task
was retried elsewhere. The driver receives each shard's rows, checks they are exactly the ids
it planned for that shard, commits each shard once and ignores a repeat. Resume stays per
sample id, so a run started on one engine resumes on the other, and a cluster needs no file
system shared with the workers. Ray's own job checkpointing is not used: the pass cache
already gives per-sample resume on both engines.

`ray.init()` with no address starts a local Ray instance; with `RAY_ADDRESS` set it joins
that cluster (the model name or path must then resolve on every worker).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from thresher.cache import PassStore, shard_table
from thresher.data import Sample
from thresher.engine.local import DEFAULT_SHARD_ROWS, PassResult, finish_pass, plan_shards
from thresher.engine.scorer import DEFAULT_BATCH_TOKENS, Scorer
from thresher.passes import PassSpec
from thresher.templates import Rendered

log = logging.getLogger(__name__)

INSTALL_HINT = "install the optional extra: pip install 'thresher[ray]' (or pip install -r requirements/ray.txt)"


@dataclass(frozen=True)
class RayOptions:
    """How the actor pool is sized; none of this enters a cache key."""

    concurrency: int = (
        2  # ours: one actor per core of a 2-core machine; set it to the GPU count on a GPU cluster
    )
    num_gpus: float = 0.0  # ours: CPU by default; 1 gives each actor a whole GPU
    num_cpus: float = 1.0  # ours: one core per actor, so actors never oversubscribe the machine
    batch_size: int = (
        1  # ours: shards per actor call; a shard (score.shard_rows) is already a full batch of work
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"score.ray_{name}={value!r}: expected a positive integer")
        for name in ("num_gpus", "num_cpus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"score.ray_{name}={value!r}: expected a number >= 0")


@dataclass(frozen=True)
class ModelLoad:
    """What a worker needs to load the pass's model itself (by alias, folder or hub id)."""

    name: str
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    trust_remote_code: bool = False
    threads: int | None = None


def require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError(
            f"score.engine=ray needs Ray Data, which is not importable ({e}); {INSTALL_HINT}"
        ) from e
    return ray


def init_ray() -> None:
    """Start a local Ray instance, or join `RAY_ADDRESS`, unless this process already has one."""
    ray = require_ray()
    if not ray.is_initialized():
        check_reachable(os.environ.get("RAY_ADDRESS", ""))
        ray.init(logging_level=logging.WARNING)


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when `RAY_ADDRESS` names a host:port nothing listens on, where `ray.init` keeps
    retrying the connection instead of failing. `auto`, `local` and an empty address are left to
    Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RuntimeError(
            f"RAY_ADDRESS={address!r}: can't connect to {host}:{port} ({e}); start the cluster (`ray start --head`), "
            "fix the address, or unset RAY_ADDRESS to start a local Ray instance"
        ) from e


class ScorerActor:
    """A Ray Data actor: loads the model once, then scores whole shards with `Scorer`."""

    def __init__(
        self, spec: PassSpec, load: ModelLoad, batch_tokens: int = DEFAULT_BATCH_TOKENS
    ) -> None:
        from thresher.models import load_model, set_threads

        set_threads(load.threads)
        lm = load_model(
            load.name,
            dtype=load.dtype,
            device=load.device,
            revision=load.revision,
            trust_remote_code=load.trust_remote_code,
        )
        self.scorer = Scorer(spec, lm.model, lm.tokenizer, batch_tokens=batch_tokens)

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        tables = []
        for shard, ids, rendered in zip(
            batch["shard"], batch["ids"], batch["rendered"], strict=True
        ):
            cols = self.scorer.score_rendered(
                json.loads(ids), [Rendered.from_json(r) for r in json.loads(rendered)]
            )
            t = shard_table(cols)
            tables.append(
                t.append_column("shard", pa.array([int(shard)] * t.num_rows, type=pa.int64()))
            )
        return pa.concat_tables(tables)


def run_pass_ray(
    samples: list[Sample],
    scorer: Scorer,
    store: PassStore,
    load: ModelLoad,
    options: RayOptions = RayOptions(),
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    demos: dict[str, Sample] | None = None,
    progress: bool = True,
    load_stats: bool = True,
    activations: tuple[str, ...] | None = None,
) -> PassResult:
    """`engine.local.run_pass` on Ray Data actors: same shards, same store, same result."""
    discarded = store.open(overwrite=overwrite)
    done = store.finished_ids()
    todo = [s for s in samples if s.id not in done]
    if todo:
        rendered = scorer.render(samples, demos)
        shards = plan_shards(samples, rendered, done, shard_rows)
        planned = {k: [samples[i].id for i in part] for k, part in enumerate(shards)}
        items = [
            {
                "shard": k,
                "ids": json.dumps(planned[k]),
                # rows carry what they need on a worker, a noisy pass's noise keys included
                "rendered": json.dumps([rendered[i].to_json() for i in part]),
            }
            for k, part in enumerate(shards)
        ]
        bar = tqdm(
            total=len(todo),
            desc=f"{scorer.spec.name()} pass (ray)",
            unit="row",
            disable=not progress,
        )
        for k, table in _scored_shards(items, planned, scorer, load, options, progress):
            store.write_table(table)
            bar.update(len(planned[k]))
        bar.close()
    return finish_pass(samples, store, done, len(todo), discarded, load_stats, activations)


def _scored_shards(
    items: list[dict[str, Any]],
    planned: dict[int, list[str]],
    scorer: Scorer,
    load: ModelLoad,
    options: RayOptions,
    progress: bool,
) -> Any:
    """Yield (shard, table) once per planned shard, rows in planned order, as actors finish them."""
    ray = require_ray()
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ScorerActor,
        fn_constructor_kwargs={
            "spec": scorer.spec,
            "load": load,
            "batch_tokens": scorer.batch_tokens,
        },
        compute=ray.data.ActorPoolStrategy(
            size=options.concurrency
        ),  # `concurrency=` is deprecated since Ray 2.51
        num_gpus=options.num_gpus or None,
        num_cpus=options.num_cpus,
        batch_size=options.batch_size,
        batch_format="numpy",
    )
    parts: dict[int, list[pa.Table]] = {}
    written: set[int] = set()
    try:
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for k in sorted(set(block.column("shard").to_pylist())):
                if k in written:  # a retried task delivered this shard again: it counts once
                    log.warning(
                        "shard %d arrived twice from the ray engine; the repeat is ignored", k
                    )
                    continue
                parts.setdefault(k, []).append(block.filter(pc.equal(block.column("shard"), k)))
                if sum(t.num_rows for t in parts[k]) >= len(planned[k]):
                    yield k, _in_planned_order(pa.concat_tables(parts.pop(k)), planned[k], k)
                    written.add(k)
    except ray.exceptions.RayError as e:
        raise RuntimeError(
            f"the ray engine failed while scoring the {scorer.spec.name()} pass: {e}"
        ) from e
    missing = sorted(set(planned) - written)
    if missing:
        raise RuntimeError(
            f"the ray engine returned no rows for {len(missing)} of {len(planned)} shards; rerun the same command to resume"
        )


def _in_planned_order(table: pa.Table, ids: list[str], shard: int) -> pa.Table:
    got = table.column("id").to_pylist()
    if sorted(got) != sorted(ids):
        raise RuntimeError(
            f"shard {shard} came back with ids {sorted(set(got) ^ set(ids))[:5]} that differ from the plan; rerun to redo it"
        )
    pos = {i: n for n, i in enumerate(got)}
    return table.take(pa.array([pos[i] for i in ids])).drop_columns(["shard"])
