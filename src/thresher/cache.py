"""Pass cache: explicit keys, parquet shards, completion markers, per-sample resume.

Layout inside a run folder: `passes/<label>/key.json` (what the pass depends on) and
`shard-<uuid>.parquet` files, each trusted only once its `shard-<uuid>.done` marker exists.
A shard is written to a temporary name, fsynced, renamed into place, and only then is the
marker written, so a killed run leaves at worst an unmarked shard, which the next run deletes
and redoes. Resume is per sample: finished ids are skipped whatever the batch size, shard
size or engine, so nothing is lost and nothing is scored twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.atomic import naming, write_atomic
from thresher.passes import PASS_VERSION, SOURCES, PassSpec, Ragged, TokenStats

KEY_FILE = "key.json"


class CacheMismatch(RuntimeError):
    """The run folder holds a pass computed with different inputs."""


def key_material(
    spec: PassSpec, model_info: dict[str, Any], template_text: str, data_hash: str
) -> dict[str, Any]:
    """Everything a pass result depends on. Batch size and worker count are not in it."""
    return {
        "pass_version": PASS_VERSION,
        "pass": spec.to_dict(),
        # the weights hash identifies the model; its folder may move (e.g. another cache dir)
        "model": {k: model_info.get(k) for k in ("hf_id", "revision", "dtype", "weights_sha256")},
        "tokenizer_hash": model_info.get("tokenizer_hash"),
        "chat_template_hash": model_info.get("chat_template_hash"),
        "template_sha256": hashlib.sha256(template_text.encode()).hexdigest(),
        "data_hash": data_hash,
    }


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def pass_label(spec: PassSpec) -> str:
    """The pass's folder name in a run, e.g. `cond.alpaca`; passes that pool activations or add
    noise get a hash of those settings, so differently pooled or perturbed passes never share a
    folder."""
    template = spec.template if spec.template in ("alpaca", "plain", "chat") else "custom"
    label = f"{spec.view}.{template}"
    if spec.boundary != "exact":
        label += f".{spec.boundary}"
    if spec.pooling is not None:
        label += f".{'+'.join(spec.pooling.sources)}-{_short_hash(spec.pooling.to_dict())}"
    if spec.noise is not None:  # T-SHIRT's perturbed copies never share the clean pass's folder
        label += f".noisy{spec.noise.copies}-{_short_hash(spec.noise.to_dict())}"
    return label if spec.forward else f"{label}.tokens"


def _short_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


ACTIVATION_PREFIXES = tuple(f"{s}." for s in SOURCES)  # stored columns: hidden.3, mlp.8


def same_reading(a: PassSpec, b: PassSpec) -> bool:
    """Whether two passes read the same tokens with the same settings (model, view, template,
    length, truncation, boundary, noise): they may then differ only in what they keep per token
    (`fields`) and what they pool (`pooling`), and one stored pass can serve the other."""
    da, db = a.to_dict(), b.to_dict()
    return all(da.get(k) == db.get(k) for k in (set(da) | set(db)) - {"fields", "pooling"})


def satisfies(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a stored pass (its key material) holds everything a wanted pass would: the same
    inputs, model, template and data, a superset of its fields, and, when it pools activations,
    a superset of its sources and layers pooled the same way. Lets `ifd` read the cond pass a
    `nait` run stored."""
    if {k: v for k, v in stored.items() if k != "pass"} != {
        k: v for k, v in wanted.items() if k != "pass"
    }:
        return False
    s, w = PassSpec.from_dict(stored["pass"]), PassSpec.from_dict(wanted["pass"])
    if not same_reading(s, w) or not set(w.fields) <= set(s.fields):
        return False
    if w.pooling is None:
        return True
    if s.pooling is None:
        return False
    sp, wp = s.pooling, w.pooling
    same_way = all(
        getattr(sp, f.name) == getattr(wp, f.name)
        for f in dataclasses.fields(wp)
        if f.name not in ("sources", "layers")
    )
    return same_way and set(wp.sources) <= set(sp.sources) and set(wp.layers) <= set(sp.layers)


def find_pass(run_dir: str | Path, material: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The label and material of a stored pass in `run_dir` that satisfies `material`, preferring
    an exact key match, else the first satisfying folder by name; None when there is none."""
    found = []
    for key_path in sorted((Path(run_dir) / "passes").glob(f"*/{KEY_FILE}")):
        stored = json.loads(key_path.read_text())
        if stored.get("key") == cache_key(material):
            return key_path.parent.name, material
        if "material" in stored and satisfies(stored["material"], material):
            found.append((key_path.parent.name, stored["material"]))
    return found[0] if found else None


class PassStore:
    """The shards of one pass in one run folder."""

    def __init__(
        self,
        run_dir: str | Path,
        spec: PassSpec,
        material: dict[str, Any],
        label: str | None = None,
    ) -> None:
        self.spec = spec
        self.dir = Path(run_dir) / "passes" / (label or pass_label(spec))
        self.material = material
        self.key = cache_key(material)

    def open(self, overwrite: bool = False) -> int:
        """Create or check the pass folder; returns how many unmarked shards were discarded."""
        key_path = self.dir / KEY_FILE
        if key_path.exists() and overwrite:
            for p in self.dir.iterdir():
                p.unlink()
        if key_path.exists():
            old = json.loads(key_path.read_text())
            if old.get("key") != self.key:
                changes = _diff(old.get("material", {}), self.material)
                raise CacheMismatch(
                    f"{self.dir} holds the {pass_label(self.spec)} pass computed with different inputs:\n  "
                    + "\n  ".join(changes or ["(key format)"])
                    + "\nRerun with --overwrite to start this pass afresh, or write to another --out folder."
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(
                key_path,
                json.dumps(
                    {"key": self.key, "material": self.material}, indent=1, sort_keys=True
                ).encode(),
            )
        discarded = 0
        for p in self.dir.glob("shard-*.parquet"):
            if not p.with_suffix(".done").exists():
                p.unlink()
                discarded += 1
        for p in self.dir.glob("*.tmp"):
            p.unlink()
        return discarded

    def committed(self) -> list[Path]:
        return sorted(p.with_suffix(".parquet") for p in self.dir.glob("shard-*.done"))

    def finished_ids(self) -> set[str]:
        """Ids with a committed row that is final: every status except `error:*` (an exception in
        the forward pass: an out-of-memory batch, a transient fault), which the next run scores
        again."""
        return {i for i, (_, _, failed) in self._latest().items() if not failed}

    def stored_ids(self) -> set[str]:
        """Ids with any committed row, failed ones included."""
        return set(self._latest())

    def statuses(self, order: list[str]) -> list[str]:
        """The stored status of each id of `order`, reading only the id and status columns (what a
        streamed pass contributes to its rows' status without loading its values)."""
        rows = self._latest()
        missing = [i for i in order if i not in rows]
        if missing:
            raise KeyError(f"{len(missing)} ids have no row in {self.dir}, e.g. {missing[:3]}")
        by_shard: dict[Path, list[str]] = {}
        for p in {rows[i][0] for i in order}:
            by_shard[p] = pq.read_table(p, columns=["status"]).column("status").to_pylist()
        return [by_shard[rows[i][0]][rows[i][1]] for i in order]

    def _latest(self) -> dict[str, tuple[Path, int, bool]]:
        """Per id, the committed row that stands: (shard, row, failed). Shards are read in the order
        they were committed, so a retried row's result replaces its `error:*` row (the newest error
        stands while it keeps failing); two final rows of one id are an error."""
        best: dict[str, tuple[Path, int, bool]] = {}
        for p in self._in_commit_order():
            try:
                t = pq.read_table(p, columns=["id", "status"])
            except (OSError, pa.ArrowException) as e:
                raise RuntimeError(
                    f"shard {p} cannot be read ({e}); delete it and its .done marker and rerun"
                ) from e
            for k, (i, s) in enumerate(
                zip(t.column("id").to_pylist(), t.column("status").to_pylist(), strict=True)
            ):
                failed = s.startswith("error:")
                if i in best and not best[i][2] and not failed:
                    raise RuntimeError(
                        f"{self.dir} holds sample {i!r} twice; rerun with --overwrite"
                    )
                if i not in best or best[i][2]:
                    best[i] = (p, k, failed)
        return best

    def _in_commit_order(self) -> list[Path]:
        def committed_at(
            p: Path,
        ) -> tuple[int, str]:  # markers before this field sort first, by name
            return json.loads(p.with_suffix(".done").read_text()).get("ns", 0), p.name

        return sorted(self.committed(), key=committed_at)

    def _shards(self) -> Iterator[pa.Table]:
        """Each committed shard with only the rows that stand; its bytes are checked against the
        marker's checksum and parsed from the same read."""
        keep: dict[Path, list[int]] = {}
        for p, k, _ in self._latest().values():
            keep.setdefault(p, []).append(k)
        for p in sorted(keep):
            data = p.read_bytes()
            if (
                hashlib.sha256(data).hexdigest()
                != json.loads(p.with_suffix(".done").read_text())["sha256"]
            ):
                raise RuntimeError(
                    f"shard {p} does not match its completion marker; delete both files and rerun"
                )
            t = pq.read_table(pa.BufferReader(data))
            rows = sorted(keep[p])
            yield t if len(rows) == t.num_rows else t.take(pa.array(rows, type=pa.int64()))

    def write_shard(self, columns: dict[str, Any]) -> Path:
        """Commit one shard: parquet to a temp name, fsync, rename, then the marker."""
        return self.write_table(_to_table(columns))

    def write_table(self, table: pa.Table) -> Path:
        """Commit one shard already in the stored layout (`shard_table`), e.g. built by a worker."""
        name = f"shard-{uuid.uuid4().hex[:16]}"
        final = self.dir / f"{name}.parquet"
        tmp = self.dir / f"{name}.parquet.tmp"
        with naming(tmp):
            # dictionary encoding only where values repeat: on float columns it grew the shards of
            # pooled activations by half (107,675 against 69,120 bytes a row, bench/activations.py)
            pq.write_table(table, tmp, use_dictionary=["status", "truncated"])
            _fsync(tmp)
            os.replace(tmp, final)
        digest = hashlib.sha256(final.read_bytes()).hexdigest()
        marker = {
            "rows": table.num_rows,
            "sha256": digest,
            "ns": time.time_ns(),
        }  # ns: the commit order
        write_atomic(final.with_suffix(".done"), json.dumps(marker).encode())
        return final

    def scan(self, activations: tuple[str, ...] | None = None) -> Iterator[TokenStats]:
        """The committed rows one shard at a time, so memory grows with a shard, not the pass;
        with only the pooled `activations` columns named (None: all of them)."""
        for t in self._shards():
            yield _from_table(_keep(t, activations))

    def load(
        self, activations: tuple[str, ...] | None = None, order: list[str] | None = None
    ) -> TokenStats:
        """All committed rows, with only the pooled `activations` columns named (None: all of
        them; `()` for a method that reads log-probs from a pass that also holds activations), in
        the order of the ids in `order` (each must be stored) or else in stored order. A shard
        whose bytes do not match its marker is an error.

        The activations are copied shard by shard into arrays of the final order, so the peak is
        about the loaded arrays plus one shard (bench/activations.py measures the ratio)."""
        n = len(order) if order is not None else len(self._latest())
        pos = {i: k for k, i in enumerate(order)} if order is not None else None
        tables, acts, seen = [], {}, 0
        for t in self._shards():
            t = _keep(t, activations)
            names = [c for c in t.column_names if c.startswith(ACTIVATION_PREFIXES)]
            if pos is None:
                where, rows = np.arange(seen, seen + t.num_rows), slice(None)
            else:  # stored rows that `order` leaves out are not loaded
                ids = t.column("id").to_pylist()
                rows = np.array([k for k, i in enumerate(ids) if i in pos], dtype=np.int64)
                where = np.array([pos[ids[k]] for k in rows], dtype=np.int64)
            seen += t.num_rows
            for c in names:
                x = fixed_rows(t.column(c))
                if (
                    c not in acts
                ):  # every row is written below: align() refuses an id of `order` not stored
                    acts[c] = np.empty((n, x.shape[1]), dtype=np.float32)
                acts[c][where] = x[rows]
            tables.append(t.drop_columns(names))
        stats = _from_table(pa.concat_tables(tables, promote_options="default") if tables else None)
        if order is not None:
            stats = stats.align(order)
        stats.activations.update(acts)
        return stats


def _list_column(rows: list[np.ndarray]) -> pa.Array:
    r = Ragged.from_rows(rows, dtype=np.float32)
    return pa.ListArray.from_arrays(
        pa.array(r.offsets.astype(np.int32)), pa.array(r.values, type=pa.float32())
    )


def shard_table(columns: dict[str, Any]) -> pa.Table:
    """A scorer's columns in the stored shard layout (what `write_table` commits)."""
    return _to_table(columns)


def _to_table(c: dict[str, Any]) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "id": pa.array(c["id"], type=pa.string()),
        "status": pa.array(c["status"], type=pa.string()),
        "n_prompt_tokens": pa.array(c["n_prompt_tokens"], type=pa.int32()),
        "n_response_tokens": pa.array(c["n_response_tokens"], type=pa.int32()),
        "n_scored": pa.array(c["n_scored"], type=pa.int32()),
        "truncated": pa.array(c["truncated"], type=pa.string()),
        "logprob": _list_column(c["logprob"]),
    }
    if c.get("entropy") is not None:
        cols["entropy"] = _list_column(c["entropy"])
    for name, arr in c.get("activations", {}).items():
        # float32, not float16: Gemma's residual stream holds values past float16's 65,504
        arr = np.asarray(arr, dtype=np.float32)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
    return pa.table(cols)


def _ragged(col: pa.ChunkedArray) -> Ragged:
    rows = col.combine_chunks()
    offsets = np.asarray(rows.offsets, dtype=np.int64)
    values = np.asarray(rows.values, dtype=np.float64)
    return Ragged(values[offsets[0] : offsets[-1]], offsets - offsets[0])


def fixed_rows(col: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as a float32 [rows, width] array."""
    col = col.combine_chunks()
    return np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), -1)


def _keep(t: pa.Table, activations: tuple[str, ...] | None) -> pa.Table:
    if activations is None:
        return t
    missing = [c for c in activations if c not in t.column_names]
    if missing:
        raise KeyError(
            f"the pass has no activation columns {missing} (it holds {[c for c in t.column_names if c.startswith(ACTIVATION_PREFIXES)]})"
        )
    return t.select(
        [c for c in t.column_names if not c.startswith(ACTIVATION_PREFIXES) or c in activations]
    )


def _from_table(t: pa.Table | None) -> TokenStats:
    if t is None:
        z = np.zeros(0, dtype=np.int64)
        return TokenStats([], [], z, z, z, [], Ragged(np.zeros(0), np.zeros(1)))
    acts = {
        name: fixed_rows(t.column(name))
        for name in t.column_names
        if name.startswith(ACTIVATION_PREFIXES)
    }
    return TokenStats(
        ids=t.column("id").to_pylist(),
        status=t.column("status").to_pylist(),
        n_prompt_tokens=t.column("n_prompt_tokens").to_numpy().astype(np.int64),
        n_response_tokens=t.column("n_response_tokens").to_numpy().astype(np.int64),
        n_scored=t.column("n_scored").to_numpy().astype(np.int64),
        truncated=t.column("truncated").to_pylist(),
        logprob=_ragged(t.column("logprob")),
        entropy=_ragged(t.column("entropy")) if "entropy" in t.column_names else None,
        activations=acts,
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
