"""Batch plans: which sequences go into which micro-batch, as index lists over the token dataset.

A plan never touches token data: it reads the length array only, so planning 1,000,000 sequences costs
a few arrays of n integers (tens of MB) instead of the copy of the tokens (1.5 GB and 11.7 GiB peak at that
scale) that dataset-level packers make.

Methods (``method``):

* ``naive``  random batches of ``batch_size`` sequences, each padded to its longest member.
* ``sort``   sort by length, cut into consecutive groups of ``batch_size * world_size`` sequences, shuffle the
  order of the groups (seeded) and deal each group round-robin over the ranks, so that all ranks of a
  step get sequences of nearly the same length (the last, partial group stays last).
* ``pack``   bin-pack sequences into packs of at most ``max_len`` tokens (``algo``):

  - ``nextfit``: input order, a new pack whenever the next sequence does not fit (LongAlign's script);
  - ``ffd``: first-fit decreasing over the whole dataset, a max-segment tree over pack capacities;
  - ``bfd``: best-fit decreasing over the whole dataset, a count tree over capacity values 0..max_len with
    one stack of packs per capacity.

  Both decreasing algorithms sort by a counting sort, O(n + max_len), then place in O(n log n) (ffd)
  resp. O(n log max_len) (bfd).
  The placement loops are compiled with numba on first use (compiled code cached on disk); without
  numba the same functions run as plain Python (same result, about 100x slower).
  Packs are sorted by cost, dealt in groups of ``world_size`` (one pack per rank, run side by side) and
  the groups shuffled (seeded), so ranks rarely wait for each other.

Consumption order (binding for the trainer): ``Plan.batches`` is the list of micro-batches; consecutive
chunks of ``world_size * grad_accum`` micro-batches form one optimizer step; inside a chunk, micro-batch j
goes to rank ``j % world_size`` at accumulation index ``j // world_size``.

Sequences longer than ``max_len`` follow ``overlong``: ``truncate`` (keep the first ``max_len`` tokens;
``Plan.lengths`` holds the effective length), ``drop`` (left out of the plan, effective length 0) or
``error``. Both counts are reported in ``Plan.stats``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longalign.batching.config import METHODS, OVERLONG, PACK_ALGOS, BatchPlanConfig
from longalign.batching.figures import plan_figures, summary_line
from longalign.batching.lengths import lengths_for
from longalign.config import check_choice
from longalign.rundir import RunDir
from longalign.stage import Summary, as_run_dir, record

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Placement kernels. Inputs: int64 sizes (already in processing order), capacity; output: pack id per item.
# Written in the subset of Python that numba compiles; ``_kernel(name, compiled=False)`` runs them as Python.
# ----------------------------------------------------------------------------------------------------------


def _nextfit_kernel(sizes, capacity):
    n = sizes.shape[0]
    out = np.empty(n, dtype=np.int64)
    pack = -1
    room = 0
    for i in range(n):
        s = sizes[i]
        if pack < 0 or s > room:
            pack += 1
            room = capacity
        room -= s
        out[i] = pack
    return out


def _ffd_kernel(sizes, capacity):
    """First fit: leftmost pack whose remaining capacity >= size. Leaves of a max-segment tree hold the
    remaining capacity of pack i; packs not opened yet hold ``capacity``, so the leftmost fitting leaf is an
    open pack when one fits and otherwise the next new pack."""
    n = sizes.shape[0]
    out = np.empty(n, dtype=np.int64)
    width = 1
    while width < max(n, 1):
        width *= 2
    tree = np.full(2 * width, capacity, dtype=np.int32)  # int32 halves the cache footprint
    for i in range(n):
        s = sizes[i]
        node = 1
        while node < width:
            node *= 2
            if tree[node] < s:
                node += 1
        out[i] = node - width
        tree[node] -= s
        node //= 2
        while node >= 1:
            left = tree[2 * node]
            right = tree[2 * node + 1]
            tree[node] = left if left > right else right
            node //= 2
    return out


def _bfd_kernel(sizes, capacity):
    """Best fit: an open pack with the smallest remaining capacity >= size, else a new pack. A count tree
    over capacity values 0..capacity finds the smallest non-empty value >= size in O(log capacity); packs
    with equal remaining capacity sit on a linked stack (``head[c]``, ``nxt[pack]``)."""
    n = sizes.shape[0]
    out = np.empty(n, dtype=np.int64)
    width = 1
    while width < capacity + 1:
        width *= 2
    count = np.zeros(2 * width, dtype=np.int32)
    head = np.full(capacity + 1, -1, dtype=np.int64)
    nxt = np.full(max(n, 1), -1, dtype=np.int64)
    n_packs = 0
    for i in range(n):
        s = sizes[i]
        # smallest capacity value c >= s with count > 0: walk up from leaf s, then down
        c = -1
        if count[1] > 0:
            node = s + width
            if count[node] > 0:
                c = s
            else:
                while node > 1:
                    if node % 2 == 0 and count[node + 1] > 0:
                        node = node + 1
                        break
                    node //= 2
                if node > 1:
                    while node < width:
                        node *= 2
                        if count[node] == 0:
                            node += 1
                    c = node - width
        if c < 0:
            pack = n_packs
            n_packs += 1
            room = capacity - s
        else:
            pack = head[c]
            head[c] = nxt[pack]
            node = c + width
            while node >= 1:
                count[node] -= 1
                node //= 2
            room = c - s
        out[i] = pack
        if room > 0:
            nxt[pack] = head[room]
            head[room] = pack
            node = room + width
            while node >= 1:
                count[node] += 1
                node //= 2
    return out


_PY_KERNELS = {"nextfit": _nextfit_kernel, "ffd": _ffd_kernel, "bfd": _bfd_kernel}
_COMPILED: dict[str, Any] = {}


@functools.lru_cache(maxsize=1)
def have_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return True


def _kernel(name: str, compiled: bool):
    """The placement kernel ``name``, compiled by numba on first use (cached on disk) when available."""
    py = {"group": _group_kernel, "order": _decreasing_order_kernel}.get(name) or _PY_KERNELS[name]
    if not compiled:
        return py
    if name not in _COMPILED:
        if have_numba():
            from numba import njit

            _COMPILED[name] = njit(cache=True, nogil=True)(py)
        else:  # pragma: no cover - depends on the environment
            log.warning("numba is not installed: packing runs as plain Python (about 100x slower)")
            _COMPILED[name] = py
    return _COMPILED[name]


def _decreasing_order_kernel(sizes, capacity):
    """Indices that sort ``sizes`` (1..capacity) by decreasing size, ties by index: a counting sort,
    O(n + capacity), about 10x faster than a comparison sort of 10^6 int64."""
    n = sizes.shape[0]
    count = np.zeros(capacity + 2, dtype=np.int64)
    for i in range(n):
        count[capacity - sizes[i]] += 1
    acc = 0
    for v in range(capacity + 2):
        c = count[v]
        count[v] = acc
        acc += c
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        key = capacity - sizes[i]
        order[count[key]] = i
        count[key] += 1
    return order


def _group_kernel(order, pack_of):
    """Counting sort of ``order`` by pack id: (members, sizes), members of pack k contiguous, in order."""
    n = order.shape[0]
    n_packs = 0
    for i in range(n):
        if pack_of[i] + 1 > n_packs:
            n_packs = pack_of[i] + 1
    sizes = np.zeros(n_packs, dtype=np.int64)
    for i in range(n):
        sizes[pack_of[i]] += 1
    pos = np.empty(n_packs, dtype=np.int64)
    acc = 0
    for k in range(n_packs):
        pos[k] = acc
        acc += sizes[k]
    members = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = pack_of[i]
        members[pos[k]] = order[i]
        pos[k] += 1
    return members, sizes


def _pack_flat(lengths: np.ndarray, max_len: int, algo: str, compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Packs as (members, sizes): indices into ``lengths`` grouped by pack, and the size of each pack."""
    if algo == "nextfit":
        order = np.arange(lengths.size, dtype=np.int64)
    else:
        # decreasing length, ties by index (stable): deterministic for a given input
        if compiled and have_numba():
            order = _kernel("order", True)(np.ascontiguousarray(lengths), int(max_len))
        else:
            order = np.argsort(-lengths, kind="stable").astype(np.int64)
    pack_of = _kernel(algo, compiled)(np.ascontiguousarray(lengths[order]), int(max_len))
    return _kernel("group", compiled)(order, pack_of)


def pack_lengths(
    lengths: Sequence[int] | np.ndarray, max_len: int, algo: str = "ffd", *, compiled: bool = True
) -> list[np.ndarray]:
    """Bin-pack ``lengths`` (each 1..max_len) into packs of at most ``max_len`` tokens.

    Returns one int64 index array per pack (indices into ``lengths``), in pack-opening order; inside a pack
    the indices follow placement order (input order for nextfit, decreasing length for ffd/bfd).
    ``compiled=False`` runs the plain-Python kernels (reference implementation for tests).
    """
    check_choice("algo", algo, PACK_ALGOS)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(
            f"pack_lengths needs lengths in 1..{max_len}; got {lengths.min()}..{lengths.max()} "
            "(truncate or drop overlong sequences first, see make_plan(overlong=...))"
        )
    members, sizes = _pack_flat(lengths, int(max_len), algo, compiled)
    return np.split(members, np.cumsum(sizes)[:-1]) if sizes.size else []


# ----------------------------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A batch plan: micro-batches of sequence indices in consumption order, plus statistics.

    ``lengths`` are the effective lengths of every sequence of the dataset (``min(length, max_len)`` under
    ``truncate``; 0 for a dropped sequence). ``truncated``/``dropped`` list the affected indices.
    """

    batches: list[list[int]]
    stats: dict[str, Any]
    lengths: np.ndarray
    method: str
    max_len: int
    batch_size: int = 1
    world_size: int = 1
    grad_accum: int = 1
    algo: str | None = None
    seed: int = 0
    overlong: str = "truncate"
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def micro_per_step(self) -> int:
        return self.world_size * self.grad_accum

    def steps(self) -> Iterator[list[list[int]]]:
        """Micro-batches grouped by optimizer step (the last step may be shorter)."""
        k = self.micro_per_step
        for start in range(0, len(self.batches), k):
            yield self.batches[start : start + k]

    def rank_batches(self, rank: int) -> list[list[int]]:
        """The micro-batches rank ``rank`` consumes, in order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank} is outside 0..{self.world_size - 1}")
        out = []
        for step in self.steps():
            out.extend(step[rank :: self.world_size])
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat, sizes): all planned indices in consumption order and the size of each micro-batch."""
        cached = getattr(self, "_arrays", None)
        if cached is None or cached[1].size != len(self.batches):
            sizes = np.array([len(b) for b in self.batches], dtype=np.int64)
            flat = np.fromiter((i for b in self.batches for i in b), dtype=np.int64, count=int(sizes.sum()))
            cached = (flat, sizes)
            self._arrays = cached
        return cached

    @classmethod
    def from_batches(
        cls,
        batches: Sequence[Sequence[int]],
        lengths: Sequence[int] | np.ndarray,
        method: str,
        *,
        max_len: int | None = None,
        batch_size: int | None = None,
        world_size: int = 1,
        grad_accum: int = 1,
        algo: str | None = None,
        seed: int = 0,
    ) -> Plan:
        """A plan from saved micro-batches (``batching/<method>.plan.json``) and the raw token lengths.

        The inverse of :meth:`Plan.save` for readers that did not make the plan: the settings that
        :func:`token_weights` and :func:`~longalign.batching.simulate.simulate_plan` need (world size, gradient
        accumulation) come from the plan's statistics record. Effective lengths follow ``truncate`` (a
        sequence longer than ``max_len`` counts ``max_len`` tokens); sequences in no micro-batch get length 0
        and are listed in ``dropped``. ``max_len`` defaults to the longest planned sequence, ``batch_size`` to
        the largest micro-batch (1 for packs). Statistics are recomputed with :func:`compute_stats` (O(n),
        25-85 ms for 10^5 sequences on 2 busy cores) and, given the same settings, equal those of the
        :func:`make_plan` call that made the batches (except ``seconds``). An index outside the lengths, or
        planned twice, is an error.
        """
        check_choice("method", method, METHODS)
        raw = np.asarray(lengths, dtype=np.int64)
        if raw.ndim != 1:
            raise ValueError(f"lengths must be a 1-D sequence of token counts, got shape {raw.shape}")
        lists = [[int(i) for i in b] for b in batches]
        sizes = np.array([len(b) for b in lists], dtype=np.int64)
        flat = np.fromiter((i for b in lists for i in b), dtype=np.int64, count=int(sizes.sum()))
        if flat.size:
            bad = flat[(flat < 0) | (flat >= raw.size)]
            if bad.size:
                k = next(j for j, b in enumerate(lists) if int(bad[0]) in b)
                raise ValueError(
                    f"micro-batch {k} holds index {int(bad[0])}, but the lengths cover sequences "
                    f"0..{raw.size - 1}; the plan was made for other tokens: re-run `longalign batch "
                    "plan` on this run"
                )
            seen = np.bincount(flat, minlength=raw.size)
            if seen.max() > 1:
                twice = int(np.flatnonzero(seen > 1)[0])
                raise ValueError(
                    f"sequence {twice} is planned {int(seen[twice])} times; a plan holds each "
                    "sequence at most once (re-run `longalign batch plan`)"
                )
        planned = np.zeros(raw.size, dtype=bool)
        planned[flat] = True
        if max_len is None:
            max_len = int(raw[flat].max()) if flat.size else 1
        if int(max_len) < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        for name, value in (("world_size", world_size), ("grad_accum", grad_accum)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        eff = np.where(planned, np.minimum(raw, int(max_len)), 0)
        if batch_size is None:
            batch_size = 1 if method == "pack" else max(int(sizes.max()) if sizes.size else 1, 1)
        plan = cls(
            batches=lists,
            stats={},
            lengths=eff,
            method=method,
            max_len=int(max_len),
            batch_size=int(batch_size),
            world_size=int(world_size),
            grad_accum=int(grad_accum),
            algo=algo if method == "pack" else None,
            seed=int(seed),
            overlong="truncate",
            truncated=np.flatnonzero(planned & (raw > int(max_len))),
            dropped=np.flatnonzero(~planned),
        )
        plan._arrays = (flat, sizes)
        plan.stats = compute_stats(plan, flat=flat, sizes=sizes, raw_lengths=raw)
        return plan

    def plan_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def stats_record(self) -> dict[str, Any]:
        """Stats plus the settings that produced them (the batching/<method>.json record)."""
        return {
            **self.stats,
            "method": self.method,
            "algo": self.algo,
            "max_len": self.max_len,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "overlong": self.overlong,
        }

    def save(self, stats_path: str | Path | None = None, plan_path: str | Path | None = None) -> None:
        from longalign.rundir import atomic_write_json, atomic_write_text

        if stats_path is not None:
            atomic_write_json(stats_path, self.stats_record())
        if plan_path is not None:  # compact: one pack per line would be 10^5 lines; a single line is fine
            atomic_write_text(plan_path, json.dumps(self.plan_dict(), separators=(",", ":")) + "\n")


def load_plan_batches(path: str | Path) -> list[list[int]]:
    """Read ``{"batches": [[i, ...], ...]}`` written by :meth:`Plan.save`, checking its shape."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    batches = data.get("batches") if isinstance(data, dict) else None
    if not isinstance(batches, list) or not all(isinstance(b, list) for b in batches):
        raise ValueError(
            f'{path}: expected {{"batches": [[index, ...], ...]}}; re-create it with '
            "`longalign batch plan ... --plan-out FILE`"
        )
    return batches


def _apply_overlong(lengths: np.ndarray, max_len: int, overlong: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    over = np.flatnonzero(lengths > max_len)
    eff = lengths.copy()
    if over.size == 0:
        return eff, over, over
    if overlong == "error":
        raise ValueError(
            f"{over.size} sequence(s) are longer than max_len={max_len} (first: index {over[0]}, "
            f"{lengths[over[0]]} tokens); raise --max-len or use overlong='truncate' or 'drop'"
        )
    if overlong == "truncate":
        eff[over] = max_len
        return eff, over, np.zeros(0, dtype=np.int64)
    eff[over] = 0
    return eff, np.zeros(0, dtype=np.int64), over


def _reorder(members: np.ndarray, sizes: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put batch ``perm[0]`` first, ``perm[1]`` second, ... (vectorised gather)."""
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    new_sizes = sizes[perm]
    new_starts = np.concatenate(([0], np.cumsum(new_sizes)[:-1]))
    idx = np.repeat(starts[perm] - new_starts, new_sizes) + np.arange(int(new_sizes.sum()), dtype=np.int64)
    return members[idx], new_sizes


def _cut(flat: np.ndarray, batch_size: int) -> np.ndarray:
    n_full, rest = divmod(flat.size, batch_size)
    return np.array([batch_size] * n_full + ([rest] if rest else []), dtype=np.int64)


def _plan_naive(kept: np.ndarray, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    flat = rng.permutation(kept)
    return flat, _cut(flat, batch_size)


def _plan_sort(
    kept: np.ndarray, eff: np.ndarray, batch_size: int, world_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    by_len = kept[np.argsort(eff[kept], kind="stable")]
    group = batch_size * world_size
    n_full = by_len.size // group
    full = by_len[: n_full * group].reshape(n_full, group)[rng.permutation(n_full)]
    # deal round-robin: rank r of a group gets g[r::world_size], so every batch stays length-sorted
    dealt = full.reshape(n_full, batch_size, world_size).transpose(0, 2, 1).reshape(-1)
    rest = by_len[n_full * group :]  # the partial group stays last, cut into batches of batch_size
    flat = np.concatenate([dealt, rest])
    sizes = np.concatenate([np.full(n_full * world_size, batch_size, dtype=np.int64), _cut(rest, batch_size)])
    return flat, sizes


def _deal_packs(
    members: np.ndarray, sizes: np.ndarray, eff: np.ndarray, max_len: int, world_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle packs; with several ranks, make the packs that run side by side similar in cost.

    The G ranks run micro-batches j*G .. j*G+G-1 at the same time, so packs are sorted by cost (linear +
    attention, equal weight at max_len: ``sum n + sum n^2 / max_len``), cut into groups of G, and the groups
    are shuffled (seeded) -- sorted batching applied to packs. A partial last group stays last.
    """
    if world_size == 1 or sizes.size <= world_size:
        return _reorder(members, sizes, rng.permutation(sizes.size))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    lens = eff[members].astype(np.float64)
    cost = np.add.reduceat(lens, starts) + np.add.reduceat(lens * lens, starts) / max_len
    by_cost = np.argsort(cost, kind="stable")
    n_full = sizes.size // world_size
    groups = by_cost[: n_full * world_size].reshape(n_full, world_size)[rng.permutation(n_full)]
    perm = np.concatenate([groups.reshape(-1), by_cost[n_full * world_size :]])
    return _reorder(members, sizes, perm)


def make_plan(
    lengths: Sequence[int] | np.ndarray,
    method: str,
    *,
    max_len: int,
    batch_size: int = 1,
    world_size: int = 1,
    grad_accum: int = 1,
    algo: str = "ffd",
    seed: int = 0,
    overlong: str = "truncate",
) -> Plan:
    """Plan micro-batches over sequences with the given token ``lengths`` (see the module docstring)."""
    t0 = time.perf_counter()
    check_choice("method", method, METHODS)
    check_choice("overlong", overlong, OVERLONG)
    if method == "pack":
        check_choice("algo", algo, PACK_ALGOS)
    for name, value in (
        ("max_len", max_len),
        ("batch_size", batch_size),
        ("world_size", world_size),
        ("grad_accum", grad_accum),
    ):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    raw = np.asarray(lengths)
    if raw.ndim != 1:
        raise ValueError(f"lengths must be a 1-D sequence of integers, got shape {raw.shape}")
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.equal(np.mod(raw, 1), 0)):
            raise ValueError("lengths must be integers (token counts)")
    raw = raw.astype(np.int64)
    if raw.size and raw.min() < 1:
        bad = int(np.flatnonzero(raw < 1)[0])
        raise ValueError(f"sequence {bad} has length {raw[bad]}; every sequence needs at least one token")
    eff, truncated, dropped = _apply_overlong(raw, int(max_len), overlong)
    kept = np.flatnonzero(eff > 0)
    rng = np.random.default_rng(seed)
    if method == "naive":
        flat, sizes = _plan_naive(kept, batch_size, rng)
    elif method == "sort":
        flat, sizes = _plan_sort(kept, eff, batch_size, world_size, rng)
    else:
        members, sizes = _pack_flat(eff[kept], int(max_len), algo)
        flat, sizes = _deal_packs(kept[members], sizes, eff, int(max_len), world_size, rng)
    plan = Plan(
        batches=_to_lists(flat, sizes),
        stats={},
        lengths=eff,
        method=method,
        max_len=int(max_len),
        batch_size=int(batch_size) if method != "pack" else 1,
        world_size=int(world_size),
        grad_accum=int(grad_accum),
        algo=algo if method == "pack" else None,
        seed=int(seed),
        overlong=overlong,
        truncated=truncated,
        dropped=dropped,
    )
    plan._arrays = (flat, sizes)
    plan.stats = compute_stats(plan, flat=flat, sizes=sizes, raw_lengths=raw)
    plan.stats["seconds"] = round(time.perf_counter() - t0, 6)
    log.info(
        "%s plan: %d sequences -> %d micro-batches (padding %.1f%%, fill %.1f%%) in %.3fs",
        method,
        plan.stats["n_sequences"],
        plan.stats["n_batches"],
        100 * plan.stats["padding_fraction"],
        100 * plan.stats["fill"],
        plan.stats["seconds"],
    )
    return plan


def _to_lists(flat: np.ndarray, sizes: np.ndarray) -> list[list[int]]:
    items = flat.tolist()
    ends = np.cumsum(sizes).tolist()
    out, pos = [], 0
    for end in ends:
        out.append(items[pos:end])
        pos = end
    return out


def compute_stats(
    plan: Plan,
    *,
    flat: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    raw_lengths: np.ndarray | None = None,
) -> dict[str, Any]:
    """Statistics of a plan (all counts over the effective lengths), in the words of
    :mod:`longalign.batching.figures`.

    * ``padding_fraction``: share of computed positions that hold no token. A padded batch computes
      ``len(batch) * longest`` positions; a pack computes its own tokens (the packed collator is padding-free),
      so a pack's padding is 0 and what packing leaves unused shows up as ``fill`` below 1 (extra packs, i.e.
      extra steps).
    * ``fill``: share of the max_len capacity used, tokens / (rows x max_len), a row being a pack or a padded
      sequence.
    * ``attention_cost``: causal (query, key) pairs computed per useful pair (>= 1): ``len(batch) *
      L(L+1)/2`` per padded batch against ``sum n(n+1)/2``; a pack with segment-aware (varlen) attention
      computes only the useful pairs (1.0); ``attention_cost_dense`` prices each pack of L_k tokens as one dense
      block-diagonal mask, L_k(L_k+1)/2.
    """
    eff = plan.lengths.astype(np.int64)
    if flat is None or sizes is None:
        flat, sizes = plan.arrays()
    n_batches = int(sizes.size)
    flat_len = eff[flat]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if n_batches else np.zeros(0, dtype=np.int64)
    tokens_per_batch = np.add.reduceat(flat_len, starts) if n_batches else np.zeros(0, dtype=np.int64)
    n_tokens = int(flat_len.sum())
    n_seq = int(flat.size)
    packed = plan.method == "pack"
    stats: dict[str, Any] = {
        "n_sequences": n_seq,
        "n_tokens": n_tokens,
        "n_batches": n_batches,
        "n_steps": math.ceil(n_batches / plan.micro_per_step) if n_batches else 0,
    }
    if packed:
        stats["lower_bound"] = math.ceil(n_tokens / plan.max_len) if n_tokens else 0
        stats["packs_over_lower_bound"] = (n_batches / stats["lower_bound"]) if stats["lower_bound"] else 1.0
    else:
        stats["lower_bound"] = math.ceil(n_seq / plan.batch_size) if n_seq else 0
    stats.update(plan_figures(flat_len, sizes, packed, plan.max_len))
    if packed:
        stats["sequences_per_pack"] = {
            "mean": n_seq / n_batches if n_batches else 0.0,
            "max": int(sizes.max()) if n_batches else 0,
        }
        stats["pack_tokens"] = {
            "mean": float(tokens_per_batch.mean()) if n_batches else 0.0,
            "min": int(tokens_per_batch.min()) if n_batches else 0,
        }
    stats["truncated"] = int(plan.truncated.size)
    stats["dropped"] = int(plan.dropped.size)
    if raw_lengths is not None:
        stats["truncated_tokens"] = (
            int((raw_lengths[plan.truncated] - plan.max_len).sum()) if plan.truncated.size else 0
        )
        stats["dropped_tokens"] = int(raw_lengths[plan.dropped].sum()) if plan.dropped.size else 0
    if flat_len.size:
        stats["length"] = {
            "min": int(flat_len.min()),
            "mean": float(flat_len.mean()),
            "median": float(np.median(flat_len)),
            "max": int(flat_len.max()),
        }
    return stats


# ----------------------------------------------------------------------------------------------------------
# The batching.<method> step
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PlanSummary(Summary):
    """A plan's statistics (``Plan.stats_record()``) and where the plan was written."""

    stats: dict[str, Any]
    stats_path: Path | None = None
    plan_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The statistics at the top level (as in ``batching/<method>.json``), plus the two paths."""
        out = super().to_dict()
        return {**out.pop("stats"), **out}

    def lines(self) -> list[str]:
        r = self.stats
        algo = f"/{r['algo']}" if r.get("algo") else ""
        out = [
            f"{r['method']}{algo}: {r['n_sequences']:,} sequences, {r['n_tokens']:,} tokens -> {r['n_batches']:,} "
            f"micro-batches (fewest possible {r['lower_bound']:,}), {r['n_steps']:,} optimizer steps",
            "  " + summary_line(r),
            f"  truncated {r['truncated']}  dropped {r['dropped']}  planned in {r['seconds']:.3f}s",
        ]
        written = [str(p) for p in (self.stats_path, self.plan_path) if p is not None]
        if written:
            out.append("  wrote " + ", ".join(written))
        return out


def plan_for(cfg: BatchPlanConfig, lengths: Sequence[int] | np.ndarray | None = None) -> Plan:
    """:func:`make_plan` with the settings of ``cfg`` over ``lengths`` (default: ``cfg.lengths``/``cfg.tokens``)."""
    if lengths is None:
        lengths = lengths_for(cfg)
    return make_plan(
        lengths,
        cfg.method,
        max_len=cfg.max_len,
        batch_size=cfg.batch_size,
        world_size=cfg.world_size,
        grad_accum=cfg.grad_accum,
        algo=cfg.algo,
        seed=cfg.seed,
        overlong=cfg.overlong,
    )


def plan_lengths(cfg: BatchPlanConfig, lengths: Sequence[int] | np.ndarray | None = None) -> PlanSummary:
    """Plan without a run directory: the statistics, and the plan in ``cfg.plan_out`` when that is set."""
    plan = plan_for(cfg, lengths)
    if cfg.plan_out:
        plan.save(plan_path=cfg.plan_out)
    return PlanSummary(plan.stats_record(), plan_path=Path(cfg.plan_out) if cfg.plan_out else None)


def run(
    cfg: BatchPlanConfig, run_dir: str | Path | RunDir, lengths: Sequence[int] | np.ndarray | None = None
) -> PlanSummary:
    """The ``batching.<method>`` step: plan the run's token lengths (or ``cfg.lengths``/``cfg.tokens``, or
    ``lengths``) into ``batching/<method>.json`` + ``.plan.json`` (and ``cfg.plan_out``), recorded in run.json."""
    run_ = as_run_dir(run_dir)
    plan = plan_for(cfg, lengths if lengths is not None else lengths_for(cfg, run_))
    stats_path, plan_path = run_.batch_stats(cfg.method), run_.batch_plan(cfg.method)
    plan.save(stats_path, plan_path)
    if cfg.plan_out:
        plan.save(plan_path=cfg.plan_out)
    summary = PlanSummary(plan.stats_record(), stats_path=stats_path, plan_path=plan_path)
    record(run_, f"batching.{cfg.method}", cfg, summary)
    return summary
