"""Local engine: one process runs the scorer over every unfinished sample, shard by shard."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tqdm.auto import tqdm

from thresher.cache import PassStore
from thresher.data import Sample
from thresher.engine.scorer import Scorer
from thresher.passes import TokenStats

log = logging.getLogger(__name__)

# ours: a shard is the unit of loss on a crash; 64 rows is seconds of work for a small model
# on CPU and keeps the per-shard file overhead negligible
DEFAULT_SHARD_ROWS = 64


@dataclass
class PassResult:
    stats: TokenStats
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
) -> PassResult:
    """Score every sample not yet in a committed shard of `store`, then load the whole pass."""
    discarded = store.open(overwrite=overwrite)
    done = store.finished_ids()
    todo = [s for s in samples if s.id not in done]
    if todo:
        rendered = scorer.render(samples, demos)
        # Shards are cut from the whole dataset sorted by (length, id), not from what is left,
        # so a resumed run rebuilds exactly the batches of an uninterrupted one (identical fp32
        # numbers); sorting by length also keeps padding small.
        order = sorted(range(len(samples)), key=lambda i: (len(rendered[i].ids), samples[i].id))
        bar = tqdm(total=len(todo), desc=f"{scorer.spec.name()} pass", unit="row", disable=not progress)
        for a in range(0, len(order), shard_rows):
            part = [i for i in order[a : a + shard_rows] if samples[i].id not in done]
            if not part:
                continue
            cols = scorer.score_rendered([samples[i].id for i in part], [rendered[i] for i in part])
            store.write_shard(cols)
            bar.update(len(part))
        bar.close()
    stats = store.load()
    wanted = {s.id for s in samples}
    extra = [i for i in stats.ids if i not in wanted]
    if extra:
        raise RuntimeError(
            f"{store.dir} holds {len(extra)} ids that are not in this dataset (e.g. {extra[:3]}); "
            "the input changed: rerun with --overwrite"
        )
    return PassResult(stats.align([s.id for s in samples]), len(done & wanted), len(todo), discarded)
