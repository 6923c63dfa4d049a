"""The pass runner: the one place that turns a `PassSpec` into stored token stats.

It loads each model once per run, resolves what depends on the loaded model (pooling layers),
builds the cache key, reuses a stored pass that holds everything asked for (e.g. `ifd` reading
the cond pass a `nait` run stored), opens the pass's store in the run folder and runs the scorer
on the configured engine, local or Ray. The pipeline's passes, NAIT's target sets and
InstructDiff's calibrated rounds all go through `run`, so every pass gets the same keys, reuse,
resume and engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thresher.atomic import replacing
from thresher.cache import PassStore, find_pass, key_material, pass_label
from thresher.data import Sample
from thresher.passes import PassSpec
from thresher.rundir import RunFolder
from thresher.templates import get_template


@dataclass
class PassRecord:
    """What the manifest records of one pass."""

    label: str
    model: str
    model_sha256: str  # the weights the pass ran on
    key: str
    reused: int
    scored: int
    discarded_shards: int


class PassRunner:
    """Runs the passes of one run (`cfg`, a RunConfig) over `samples` into `run_dir/passes/`."""

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        samples: list[Sample],
        data_hash: str,
        loaded: Any = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.samples = samples
        self.data_hash = data_hash
        self.models: dict[str, Any] = {cfg.model.name: loaded} if loaded is not None else {}
        self.template_text: str | None = None

    def model(self, name: str) -> Any:
        """The loaded model `name` (an alias, folder, .gguf or hub id), loaded once per run."""
        if name not in self.models:
            from thresher.models import load_model

            m = self.cfg.model
            self.models[name] = load_model(
                name,
                dtype=m.dtype,
                device=m.device,
                revision=m.revision if name == m.name else None,
                trust_remote_code=m.trust_remote_code,
                reproduce=self.cfg.method.reproduce,
            )
        return self.models[name]

    def embed(self, embedder: str, texts: list[str]) -> np.ndarray:
        """Sentence embeddings of `texts` by `embedder`, cached in the run folder by the embedder's
        name and the texts' hash, so methods that embed the same texts (MIWV's retrieval, the
        k-center core set) compute them once."""
        from thresher.embed import Embedder

        digest = hashlib.sha256(json.dumps([embedder, texts]).encode()).hexdigest()[:16]
        path = RunFolder(self.run_dir).embeddings / f"{digest}.npy"
        if path.is_file():
            emb = np.load(path)
            if emb.shape[0] == len(texts):
                return emb
        emb = Embedder(embedder).encode(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
        return emb

    def resolve(self, spec: PassSpec) -> PassSpec:
        """`spec` for its loaded model: pooling layers ("all", a paper's depth) made concrete."""
        if spec.pooling is None or spec.pooling.resolved:
            return spec
        return spec.resolve(self.model(spec.model).info.n_layers)

    def run(
        self,
        role: str,
        spec: PassSpec,
        samples: list[Sample] | None = None,
        data_hash: str | None = None,
        *,
        demos: dict[str, Sample] | None = None,
        key_extra: dict[str, Any] | None = None,
        stream: bool = False,
        activations: tuple[str, ...] | None = None,
    ) -> tuple[Any, PassRecord]:
        """Run (or reuse) `spec` and return its TokenStats, or its PassStore with `stream=True`.

        Over the pool (`samples=None`) the folder is the pass's label, shared by every method of
        the run's model; a pass of another model (a calibrated copy) gets `<label>@<role>`. Over
        other samples (a target set) `role` is the folder and `data_hash` their content hash.
        `activations` limits the pooled columns loaded (None: those `spec` pools)."""
        cfg = self.cfg
        spec = self.resolve(spec)
        lm = self.model(spec.model)
        info = dataclasses.asdict(lm.info)
        text = get_template(spec.template, lm.tokenizer).text
        if samples is None:
            samples, data_hash = self.samples, self.data_hash
            if spec.model == cfg.model.name:
                self.template_text = self.template_text or text
                label = pass_label(spec)
            else:
                label = f"{pass_label(spec)}@{role}"
        else:
            label = role
        material = key_material(spec, info, text, data_hash)
        if key_extra:  # what `fit` decided, e.g. MIWV's demonstration per sample
            material["extra"] = key_extra
        # a stored pass with more fields or layers serves this one; it is resumed with its own
        # spec so all its shards hold the same columns, and loaded with only the columns asked for
        wanted = spec.activation_columns() if activations is None else activations
        found = None if cfg.score.overwrite else find_pass(self.run_dir, material)
        if found is not None:
            label, material = found
            spec = PassSpec.from_dict(material["pass"])
        store = PassStore(self.run_dir, spec, material, label)
        result = self._engine(samples, spec, lm, store, demos, not stream, wanted)
        record = PassRecord(
            store.dir.name,
            spec.model,
            lm.info.weights_sha256,
            store.key,
            result.reused,
            result.scored,
            result.discarded_shards,
        )
        return (store if stream else result.stats), record

    def _engine(
        self,
        samples: list[Sample],
        spec: PassSpec,
        lm: Any,
        store: PassStore,
        demos: dict[str, Sample] | None,
        load_stats: bool,
        activations: tuple[str, ...],
    ) -> Any:
        from thresher.engine.scorer import Scorer  # torch loads only when a pass runs

        sc, m = self.cfg.score, self.cfg.model
        scorer = Scorer(spec, lm.model, lm.tokenizer, batch_tokens=sc.batch_tokens)
        args = dict(
            shard_rows=sc.shard_rows,
            overwrite=sc.overwrite,
            progress=sc.progress,
            demos=demos,
            load_stats=load_stats,
            activations=activations,
        )
        if sc.engine == "ray":
            from thresher.engine.ray import ModelLoad, RayOptions, run_pass_ray

            # the precision the driver's model loaded in (and the cache key holds), so every
            # worker scores in it, never its own `auto` choice
            name, info = spec.model, lm.info
            load = ModelLoad(
                name,
                info.dtype,
                info.device,
                m.revision if name == m.name else None,
                m.trust_remote_code,
                m.threads,
            )
            options = RayOptions(
                sc.ray_concurrency, sc.ray_num_gpus, sc.ray_num_cpus, sc.ray_batch_size
            )
            return run_pass_ray(samples, scorer, store, load, options, **args)
        from thresher.engine.local import run_pass

        return run_pass(samples, scorer, store, **args)
