"""Local engine: one process runs the scorer over every unfinished sample, shard by shard."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tqdm.auto import tqdm

from thresher.cache import PassStore
from thresher.data import Sample
from thresher.engine.scorer import Scorer
from thresher.passes import TokenStats
from thresher.templates import Rendered

log = logging.getLogger(__name__)

# ours: a shard is the unit of loss on a crash; 64 rows is seconds of work for a small model
# on CPU and keeps the per-shard file overhead negligible
DEFAULT_SHARD_ROWS = 64


@dataclass
class PassResult:
    stats: (
        TokenStats | None
    )  # None when the pass was not loaded (`load_stats=False`: read it with PassStore.scan)
    reused: int  # rows found finished in committed shards
    scored: int  # rows computed in this call
    discarded_shards: int  # unmarked shards from an interrupted run, deleted and redone


def run_pass(
    samples: list[Sample],
    scorer: Scorer,
    store: PassStore,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    demos: dict[str, Sample] | None = None,
    progress: bool = True,
    load_stats: bool = True,
    activations: tuple[str, ...] | None = None,
) -> PassResult:
    """Score every sample not yet in a committed shard of `store`, then load the whole pass
    (unless `load_stats=False`, for passes too large for memory that a method streams shard by
    shard), with only the pooled `activations` columns named (None: all of them)."""
    discarded = store.open(overwrite=overwrite)
    done = store.finished_ids()
    todo = [s for s in samples if s.id not in done]
    if todo:
        rendered = scorer.render(samples, demos)
        bar = tqdm(
            total=len(todo), desc=f"{scorer.spec.name()} pass", unit="row", disable=not progress
        )
        for part in plan_shards(samples, rendered, done, shard_rows):
            cols = scorer.score_rendered([samples[i].id for i in part], [rendered[i] for i in part])
            store.write_shard(cols)
            bar.update(len(part))
        bar.close()
    return finish_pass(samples, store, done, len(todo), discarded, load_stats, activations)


def plan_shards(
    samples: list[Sample], rendered: list[Rendered], done: set[str], shard_rows: int
) -> list[list[int]]:
    """Positions of the unfinished samples, shard by shard; every engine cuts shards here.

    Shards are cut from the whole dataset sorted by (length, id), not from what is left, so a
    resumed run (on either engine) rebuilds exactly the batches of an uninterrupted one
    (identical fp32 numbers); sorting by length also keeps padding small.
    """
    order = sorted(range(len(samples)), key=lambda i: (len(rendered[i].ids), samples[i].id))
    shards = (
        [i for i in order[a : a + shard_rows] if samples[i].id not in done]
        for a in range(0, len(order), shard_rows)
    )
    return [part for part in shards if part]


def finish_pass(
    samples: list[Sample],
    store: PassStore,
    done: set[str],
    n_scored: int,
    discarded: int,
    load_stats: bool = True,
    activations: tuple[str, ...] | None = None,
) -> PassResult:
    """Load every committed row of the pass, aligned to `samples` (only check the ids if not `load_stats`)."""
    if not load_stats:
        ids = store.stored_ids()
        wanted = {s.id for s in samples}
        if ids != wanted:
            raise RuntimeError(
                f"{store.dir} holds {len(ids - wanted)} ids not in this dataset and lacks {len(wanted - ids)}: rerun with --overwrite"
            )
        return PassResult(None, len(done & wanted), n_scored, discarded)
    wanted = {s.id for s in samples}
    extra = sorted(store.stored_ids() - wanted)
    if extra:
        raise RuntimeError(
            f"{store.dir} holds {len(extra)} ids that are not in this dataset (e.g. {extra[:3]}); "
            "the input changed: rerun with --overwrite"
        )
    return PassResult(
        store.load(activations, order=[s.id for s in samples]),
        len(done & wanted),
        n_scored,
        discarded,
    )
