"""ExpertPool: the cores and heads of E frozen TT-LoRA experts, served to the mixture per batch.

Storage: an expert is one row of P numbers, its cores of every adapted module (ranks zero-padded to
the pool's rank R, which computes the same ΔW; its α folded into the first core), and one head
padded to C_max labels (the extra biases -inf). Rows live in chunks of ``CHUNK_ROWS`` (buffers of
the module): adding an expert fills a row or opens a chunk and never copies the others, so a pool
grows to 10,000s of experts (a MiniLM q,v expert is ~37 KB of cores, a q,k,v,dense one 120 KB).
Experts trained with ``ExpertConfig.min_layer = k`` leave layers < k alone: a pool of such experts
has no slots there (``min_layer``; those layers stay plain frozen linears), refuses an expert that
adapts them, and checks that the cores it does not store give ΔW = 0.
``storage=torch.float16`` keeps the cores in half precision at rest (half the memory; each batch's
experts are widened to the compute dtype before their chains are merged); the heads stay in the
compute dtype. ``storage=torch.int8``: int8 codes and a float32 scale per TT core (``quant``; ~1.03 bytes a
number). Converting the pool (``.double()``) converts float cores too.

Lazy experts (``open_folders``, ``open_pack``): each folder's ``adapter_config.json`` is read and
checked at once; its safetensors file is memory-mapped (``safetensors.safe_open``) and read,
checked and copied into its row only when a batch first needs the expert (under a lock: threads
may share the pool).

``gather(expert_idx)`` serves one micro-batch: the rows of the batch's distinct experts, each chain
merged once into its halves A [d_in, R] and B [R, d_out] (modules with the same TT factors in one
batched call; the last ``HALVES_CACHE`` experts' halves are kept, so a hot expert is merged once,
not once per call), then indexed per row for ``adapters.GatheredTTLinear`` (or given once when the
batch has one expert). The cost grows with the distinct experts of the batch, never with E. Modules below the lowest layer that one of these
experts adapts are left out (their ΔW is 0); ``Gathered.first_layer`` tells the mixture when the
router's prefix of the frozen model is also the experts' (computed once).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import adapters, store, tt
from ..adapters import layer_index
from ..base.backbone import BackboneInfo
from ..errors import MoEError
from ..experts import Expert
from . import quant

CHUNK_ROWS = 64              # experts per storage chunk
HALVES_CACHE = 64            # experts whose merged halves stay cached (a MiniLM q,k,v,dense
                             # expert's: 0.85 MB, 7× its cores)
NO_LAYER = 1 << 30           # first_layer of an expert that adapts no layer


@dataclass(frozen=True)
class ModuleSlot:
    """One adapted linear module: its qualified name, layer number and TT factors."""
    name: str
    layer: int | None
    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]

    @property
    def d_in(self) -> int:
        return math.prod(self.in_factors)

    @property
    def d_out(self) -> int:
        return math.prod(self.out_factors)


@dataclass(frozen=True)
class _Group:
    """Modules with the same factors: a contiguous block [M, size] of a row, merged together."""
    slots: tuple[ModuleSlot, ...]
    offset: int                                   # start of the block in the row
    size: int                                     # numbers per module
    cores: tuple[tuple[int, int, tuple[int, ...]], ...]   # (start, numel, [R, s, R']) per core


@dataclass(frozen=True)
class Gathered:
    """What one micro-batch of B rows needs from the pool."""
    halves: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> A [B, d_in, R], B [B, R, d_out]
    head_weight: torch.Tensor                             # [B, C_max, H]
    head_bias: torch.Tensor                               # [B, C_max], -inf past a row's labels
    first_layer: int                                      # no row's expert adapts a lower layer
    last_token: torch.Tensor                              # [B] bool: the row's head reads the
                                                          # last real token (else the mean)


@dataclass
class ExpertCard:
    """What the mixture says about an expert. ``expert``: the Expert given, or for a lazy one its
    metadata read from the folder (tensors {}); None for cores added directly (``add_rows``)."""
    name: str
    task: str
    label_names: list[str]
    expert: Expert | None = field(default=None, repr=False)

    @property
    def pooling(self) -> str:
        """How the expert's head reads the base model ("mean" for cores added directly)."""
        return self.expert.pooling if self.expert is not None else "mean"

    @property
    def is_regression(self) -> bool:
        """No label names: the expert answers one score."""
        return len(self.label_names) == 0

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1


@dataclass(frozen=True)
class _Lazy:
    """An opened expert folder (JSON and weights header checked) whose tensors are read on first use."""
    opened: store.OpenedExpert
    rank: int
    alpha: float

    @property
    def what(self) -> str:
        return self.opened.what


def module_slots(expert: Expert, names: Sequence[str], min_layer: int = 0) -> list[ModuleSlot]:
    """The slots of an expert's adapted modules ``names`` in layer order, leaving out those of
    layers below ``min_layer`` (modules without a layer number are kept)."""
    slots = []
    for name in sorted(set(names), key=lambda n: (layer_index(n) or 0, n)):
        if (layer_index(name) if layer_index(name) is not None else min_layer) < min_layer:
            continue
        layout = adapters.layout_for(expert.tt_layout, name)
        if layout is None:
            raise MoEError(f"expert {expert.name!r}: module {name!r} is not one of its targets")
        slots.append(ModuleSlot(name, layer_index(name), tuple(layout["in_factors"]),
                                tuple(layout["out_factors"])))
    return slots


def _pool_min_layer(experts: Sequence[Expert], modules: Sequence[str]) -> int:
    """The lowest ``min_layer`` of the experts, at most the top layer of ``modules`` (every
    target keeps a slot, so experts that adapt nothing still share the pool's TT shapes)."""
    top = max((layer_index(m) for m in modules if layer_index(m) is not None), default=0)
    return min(min(e.config.min_layer for e in experts), top)


def _core_modules(keys) -> list[str]:
    return [key.rpartition(".cores.")[0] for key in keys if ".cores." in key]


class ExpertPool(nn.Module):
    """E experts' cores and heads, growable and lazily loaded; see the module docstring."""

    def __init__(self, slots: Sequence[ModuleSlot], rank: int, hidden_size: int, max_labels: int,
                 base: BackboneInfo | None = None, dtype: torch.dtype = torch.float32,
                 storage: torch.dtype | None = None, min_layer: int = 0):
        super().__init__()
        self.min_layer = int(min_layer)  # no expert adapts a lower layer: no slots there
        self._storage = storage          # the cores' dtype at rest (None: ``dtype``); heads: ``dtype``
        self._int8 = storage == torch.int8
        self.slots, self.rank, self.base = list(slots), int(rank), base
        self.hidden_size, self.max_labels = int(hidden_size), int(max_labels)
        self.cards: list[ExpertCard] = []
        self.index: dict[str, int] = {}
        self._first_layer: list[int | None] = []
        self._pending: dict[int, _Lazy] = {}
        self._lock = threading.RLock()
        self._halves_cache: OrderedDict[int, dict] = OrderedDict()   # expert -> its halves (LRU)
        self._groups: list[_Group] = []
        offset = 0
        for factors in dict.fromkeys((s.in_factors, s.out_factors) for s in self.slots):
            members = tuple(s for s in self.slots if (s.in_factors, s.out_factors) == factors)
            cores, start = [], 0
            for shape in tt.core_shapes(factors[0], factors[1], self.rank):
                numel = shape[0] * shape[1] * shape[2]
                cores.append((start, numel, tuple(shape)))
                start += numel
            self._groups.append(_Group(members, offset, start, tuple(cores)))
            offset += start * len(members)
        self.width = offset                                       # P: numbers per expert row
        sizes = [numel for g in self._groups for _ in g.slots for _, numel, _ in g.cores]
        self._cores = len(sizes)                                  # TT cores per expert row
        self.register_buffer("_segment", quant.segment_ids(sizes), persistent=False)   # [P]
        self.register_buffer("_probe", torch.zeros(0, dtype=dtype), persistent=False)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_experts(cls, experts: Sequence[Expert], rank: int | None = None,
                     max_labels: int | None = None, storage: torch.dtype | None = None
                     ) -> "ExpertPool":
        """A pool holding ``experts`` (TT-LoRA, one base model, the same targets and factors;
        ranks may differ), room for ranks up to ``rank`` and ``max_labels`` labels (default:
        the experts' largest), cores kept in ``storage`` (None: float32). MoEError otherwise."""
        first = _check_experts(experts)
        min_layer = _pool_min_layer(experts, _core_modules(first.tensors))
        pool = cls(module_slots(first, _core_modules(first.tensors), min_layer),
                   rank or max(e.config.rank for e in experts),
                   first.tensors["head.weight"].shape[1],
                   max_labels or max(e.num_labels for e in experts), first.base, storage=storage,
                   min_layer=min_layer)
        for expert in experts:
            pool.add(expert)
        return pool

    @classmethod
    def open_folders(cls, folders: Sequence[str | Path], expected_fingerprint: str | None = None,
                     rank: int | None = None, reference: str = "the loaded base model",
                     storage: torch.dtype | None = None) -> "ExpertPool":
        """A pool of expert folders read lazily: configs checked now (StoreError, MoEError; each
        made on the base model of ``expected_fingerprint``, named ``reference``, when given),
        weights read when a batch first needs each expert."""
        opened = [_open_folder(Path(f), expected_fingerprint, reference) for f in folders]
        metas = [meta for meta, _ in opened]
        first = _check_experts(metas)
        min_layer = _pool_min_layer(metas, _core_modules(opened[0][1].opened.header))
        pool = cls(module_slots(first, _core_modules(opened[0][1].opened.header), min_layer),
                   rank or max(e.config.rank for e in metas), first.base.hidden_size,
                   max(e.num_labels for e in metas), first.base, storage=storage,
                   min_layer=min_layer)
        for meta, lazy in opened:
            pool._check_fits(meta)
            pool._check_manifest(meta, lazy)
            pool._append(ExpertCard(meta.name, meta.config.task, list(meta.label_names), meta),
                         None, None, None, lazy)
        return pool

    def add(self, expert: Expert) -> int:
        """Add a resident expert (checked against the pool); returns its index."""
        self._check_fits(expert)
        row = self._row_of(expert.tensors, expert.config.rank, expert.config.alpha, expert.name)
        head_w, head_b = self._head_of(expert.tensors["head.weight"], expert.tensors["head.bias"])
        card = ExpertCard(expert.name, expert.config.task, list(expert.label_names), expert)
        return self._append(card, row, head_w, head_b)

    def add_rows(self, cards: Sequence[ExpertCard], rows: torch.Tensor, head_weight: torch.Tensor,
                 head_bias: torch.Tensor) -> None:
        """Add experts given as rows [n, P] (α folded, rank R, the pool's layout) with heads
        [n, C_max, H] and biases [n, C_max] (-inf past their labels)."""
        for card, row, weight, bias in zip(cards, rows, head_weight, head_bias, strict=True):
            self._append(card, row, weight, bias)

    def _check_fits(self, expert: Expert) -> None:
        if expert.name in self.index:
            raise MoEError(f"expert names must be unique: {expert.name!r} is already in the pool")
        if self.base is not None and expert.base.fingerprint != self.base.fingerprint:
            raise MoEError(f"expert {expert.name!r} was trained on another base model than the "
                           "pool's experts")
        if expert.config.min_layer < self.min_layer:
            raise MoEError(f"expert {expert.name!r} adapts layers from {expert.config.min_layer}, "
                           f"the pool only from {self.min_layer} (its experts leave the lower "
                           "layers alone): build a new pool with it")
        if expert.config.rank > self.rank or expert.num_labels > self.max_labels:
            raise MoEError(f"expert {expert.name!r} (rank {expert.config.rank}, "
                           f"{expert.num_labels} labels) exceeds the pool's rank {self.rank} or "
                           f"{self.max_labels} labels")
        factors = {(adapters.layout_key(expert.tt_layout, slot.name), slot.in_factors, slot.out_factors)
                   for slot in self.slots}
        given = {(t, tuple(v["in_factors"]), tuple(v["out_factors"]))
                 for t, v in expert.tt_layout.items()}
        if given != factors:
            raise MoEError(f"expert {expert.name!r} has TT shapes {expert.tt_layout}: experts "
                           "of one mixture must share targets and TT shapes (ranks may differ)")

    def _check_manifest(self, meta: Expert, lazy: _Lazy) -> None:
        """A lazy expert's tensor manifest names exactly the pool's cores (at its rank) and a head."""
        expected = {f"{s.name}.cores.{k}": list(shape) for s in self.slots for k, shape in
                    enumerate(tt.core_shapes(s.in_factors, s.out_factors, lazy.rank))}
        expected |= {"head.weight": [meta.num_labels, self.hidden_size],
                     "head.bias": [meta.num_labels]}
        got = {key: list(shape) for key, (_dtype, shape) in lazy.opened.header.items()
               if key in expected or not self._below(key)}      # cores of unadapted layers: ΔW 0
        if got != expected:
            wrong = sorted(set(got) ^ set(expected)) or sorted(
                k for k in got if got[k] != expected[k])
            raise store.StoreError(f"{lazy.what}: its tensors do not fit the pool's modules "
                                   f"(first differences: {wrong[:3]})")

    def _below(self, key: str) -> bool:
        """Whether ``key`` is a core of a module below the pool's first layer (not stored)."""
        module = key.rpartition(".cores.")[0]
        return bool(module) and layer_index(module) is not None and layer_index(module) < self.min_layer

    def _check_below(self, tensors, name: str) -> None:
        """The cores the pool does not store (layers below ``min_layer``) give ΔW = 0: some core
        of each such chain is all zero (``ExpertConfig.min_layer`` zeroes them all)."""
        chains: dict[str, bool] = {}
        for key, core in tensors.items():
            if self._below(key):
                module = key.rpartition(".cores.")[0]
                chains[module] = chains.get(module, False) or not bool(core.any())
        adapted = sorted(m for m, zero in chains.items() if not zero)
        if adapted:
            raise MoEError(f"expert {name!r} adapts {adapted[0]}, below layer {self.min_layer} "
                           "where this pool's experts adapt nothing")

    def _row_of(self, tensors, rank: int, alpha: float, name: str) -> torch.Tensor:
        """One expert's cores as a row [P]: padded to rank R, α folded into each first core."""
        self._check_below(tensors, name)
        parts = []
        for group in self._groups:
            for slot in group.slots:
                shapes = tt.core_shapes(slot.in_factors, slot.out_factors, rank)
                for k, ((_, numel, padded), shape) in enumerate(zip(group.cores, shapes)):
                    core = tensors.get(f"{slot.name}.cores.{k}")
                    if core is None or list(core.shape) != list(shape):
                        raise MoEError(f"expert {name!r}: core {slot.name}.cores.{k} is "
                                       f"{None if core is None else list(core.shape)}, "
                                       f"expected {list(shape)}")
                    out = torch.zeros(padded, dtype=torch.float64)
                    out[: shape[0], :, : shape[2]] = core * (alpha if k == 0 else 1.0)
                    parts.append(out.reshape(-1))
        return torch.cat(parts)

    def _head_of(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head_w = torch.zeros(self.max_labels, self.hidden_size, dtype=torch.float64)
        head_b = torch.full((self.max_labels,), float("-inf"), dtype=torch.float64)
        head_w[: weight.shape[0]], head_b[: bias.shape[0]] = weight, bias
        return head_w, head_b

    def _first_layer_of(self, row: torch.Tensor) -> int:
        """The lowest layer with a non-zero update (a module whose chain has an all-zero core has
        ΔW = 0); modules without a layer number count as layer 0."""
        adapted = [NO_LAYER]
        for group in self._groups:
            block = row[group.offset: group.offset + group.size * len(group.slots)]
            for slot, cores in zip(group.slots, block.view(len(group.slots), group.size)):
                if all(bool(cores[start:start + numel].any()) for start, numel, _ in group.cores):
                    adapted.append(slot.layer or 0)
        return min(adapted)

    def _append(self, card: ExpertCard, row, head_w, head_b, lazy: _Lazy | None = None) -> int:
        with self._lock:
            idx = len(self.cards)
            chunk, slot = divmod(idx, CHUNK_ROWS)
            if slot == 0:
                dtype, device = self._probe.dtype, self._probe.device
                self.register_buffer(f"rows_{chunk}", torch.zeros(
                    CHUNK_ROWS, self.width, dtype=self._storage or dtype, device=device),
                    persistent=False)
                if self._int8:                             # one scale per core of the row
                    self.register_buffer(f"scale_{chunk}", torch.zeros(
                        CHUNK_ROWS, self._cores, device=device), persistent=False)
                self.register_buffer(f"head_w_{chunk}", torch.zeros(
                    CHUNK_ROWS, self.max_labels, self.hidden_size, dtype=dtype, device=device),
                    persistent=False)
                self.register_buffer(f"head_b_{chunk}", torch.zeros(
                    CHUNK_ROWS, self.max_labels, dtype=dtype, device=device), persistent=False)
            self.cards.append(card)
            self.index[card.name] = idx
            self._first_layer.append(None)
            if lazy is not None:
                self._pending[idx] = lazy
            else:
                self._write(idx, row, head_w, head_b)
            return idx

    def _write(self, idx: int, row: torch.Tensor, head_w: torch.Tensor, head_b: torch.Tensor) -> None:
        chunk, slot = divmod(idx, CHUNK_ROWS)
        if self._int8:
            codes, scales = quant.quantize(row.to(self._segment.device), self._segment, self._cores)
            self._buffers[f"rows_{chunk}"][slot].copy_(codes)
            self._buffers[f"scale_{chunk}"][slot].copy_(scales)
        else:
            self._buffers[f"rows_{chunk}"][slot].copy_(row)
        self._buffers[f"head_w_{chunk}"][slot].copy_(head_w)
        self._buffers[f"head_b_{chunk}"][slot].copy_(head_b)
        with self._lock:
            self._halves_cache.pop(idx, None)
        self._first_layer[idx] = self._first_layer_of(row)

    # ------------------------------------------------------------------ lazy loading

    def _load(self, ids: Sequence[int]) -> None:
        """Read the pending experts among ``ids`` from their memory-mapped files (once)."""
        if not any(i in self._pending for i in ids):
            return
        with self._lock:
            for idx in ids:
                lazy = self._pending.get(idx)
                if lazy is None:
                    continue
                tensors = lazy.opened.load().tensors     # checked against the header, finite
                row = self._row_of(tensors, lazy.rank, lazy.alpha, self.cards[idx].name)
                self._write(idx, row, *self._head_of(tensors["head.weight"], tensors["head.bias"]))
                del self._pending[idx]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the pool computes in (halves, heads)."""
        return self._probe.dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype the cores are kept in (float16 halves a large pool's memory)."""
        return self._buffers["rows_0"].dtype if "rows_0" in self._buffers else (
            self._storage or self.dtype)

    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def pending(self) -> int:
        """Experts opened but not read yet."""
        return len(self._pending)

    # ------------------------------------------------------------------ serving

    def __len__(self) -> int:
        return len(self.cards)

    @property
    def names(self) -> list[str]:
        return [card.name for card in self.cards]

    def _rows(self, ids: Sequence[int], prefix: str) -> torch.Tensor:
        """Stacked rows of the experts ``ids`` from the chunks named ``prefix``: [U, ...]."""
        return torch.stack([self._buffers[f"{prefix}_{i // CHUNK_ROWS}"][i % CHUNK_ROWS]
                            for i in ids])

    def _core_rows(self, ids: Sequence[int]) -> torch.Tensor:
        """The experts' rows [U, P] in the compute dtype (int8 storage: dequantised)."""
        if self._int8:
            return quant.dequantize(self._rows(ids, "rows"), self._rows(ids, "scale"),
                                    self._segment, self.dtype)
        return self._rows(ids, "rows").to(self.dtype)

    def gather(self, expert_idx: torch.Tensor) -> Gathered:
        """Halves and heads of each row's expert (``expert_idx`` [B], long, 0..E-1). When every
        row has the same expert its halves have one row ([1, d_in, R]: ``shared_update``)."""
        if expert_idx.numel() and not 0 <= int(expert_idx.min()) <= int(expert_idx.max()) < len(self):
            raise MoEError(f"expert indices must be in 0..{len(self) - 1}")
        unique, inverse = torch.unique(expert_idx, return_inverse=True)     # [U], [B]
        ids = unique.tolist()
        self._load(ids)
        per_expert = self._halves_of(ids)                  # U × {module: (A [d_in, R], B [R, d_out])}
        first = min(self._first_layer[i] for i in ids)
        halves = {}
        for slot in self.slots:
            if (slot.layer or 0) < first:
                continue
            if len(ids) == 1:
                left, right = per_expert[0][slot.name]
                halves[slot.name] = (left[None], right[None])                  # [1, d_in, R], ...
            else:
                left = torch.stack([h[slot.name][0] for h in per_expert])[inverse]   # [B, d_in, R]
                right = torch.stack([h[slot.name][1] for h in per_expert])[inverse]  # [B, R, d_out]
                halves[slot.name] = (left, right)
        last = torch.tensor([self.cards[i].pooling == "last" for i in ids],
                            dtype=torch.bool, device=expert_idx.device)              # [U]
        return Gathered(halves, self._rows(ids, "head_w")[inverse],
                        self._rows(ids, "head_b")[inverse], first, last[inverse])

    def first_layer(self, ids: Sequence[int]) -> int:
        """The lowest layer that one of the experts ``ids`` adapts (read first if lazy)."""
        ids = sorted(set(ids))
        self._load(ids)
        return min(self._first_layer[i] for i in ids)

    def _halves_of(self, ids: Sequence[int]) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Each expert's merged halves of every module, from the cache of the last
        ``HALVES_CACHE`` experts served or merged now (one batched call per group of modules with
        the same factors, for the experts not cached)."""
        with self._lock:
            cached = {i: self._halves_cache[i] for i in ids if i in self._halves_cache}
            for i in cached:
                self._halves_cache.move_to_end(i)
        missing = [i for i in ids if i not in cached]
        if missing:
            rows = self._core_rows(missing)                                   # [U', P]
            fresh: dict[int, dict] = {i: {} for i in missing}
            for group in self._groups:
                block = rows[:, group.offset: group.offset + group.size * len(group.slots)]
                block = block.view(len(missing), len(group.slots), group.size)  # [U', M, size]
                cores = [block[..., start:start + numel].reshape(-1, *shape)  # [U'·M, R, s, R']
                         for start, numel, shape in group.cores]
                slot = group.slots[0]
                left, right = tt.tt_halves(cores, slot.in_factors, slot.out_factors)
                left = left.view(len(missing), len(group.slots), *left.shape[1:])     # [U', M, d_in, R]
                right = right.view(len(missing), len(group.slots), *right.shape[1:])  # [U', M, R, d_out]
                for u, i in enumerate(missing):
                    for m, member in enumerate(group.slots):
                        fresh[i][member.name] = (left[u, m], right[u, m])
            with self._lock:
                for i in missing:
                    self._halves_cache[i] = fresh[i]
                while len(self._halves_cache) > HALVES_CACHE:
                    self._halves_cache.popitem(last=False)
            cached |= fresh
        return [cached[i] for i in ids]

    def _apply(self, fn, *args, **kwargs):
        """Moving or converting the pool drops the cached halves (they follow its rows)."""
        with self._lock:
            self._halves_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def row_layers(self) -> torch.Tensor:
        """The layer of each number of an expert row, [P] long (modules without a number: 0)."""
        parts = [torch.full((group.size,), slot.layer or 0, dtype=torch.long)
                 for group in self._groups for slot in group.slots]
        return torch.cat(parts)

    def dense_cores(self, module: str) -> list[torch.Tensor]:
        """Every expert's cores of ``module`` stacked: [E, R, s, R'] per core (α folded in)."""
        ids = list(range(len(self)))
        self._load(ids)
        group = next(g for g in self._groups if module in [s.name for s in g.slots])
        j = [s.name for s in group.slots].index(module)
        block = self._core_rows(ids)[:, group.offset + j * group.size:][:, : group.size]
        return [block[:, start:start + numel].reshape(-1, *shape)
                for start, numel, shape in group.cores]

    def dense_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's head: weights [E, C_max, H], biases [E, C_max]."""
        ids = list(range(len(self)))
        self._load(ids)
        return self._rows(ids, "head_w"), self._rows(ids, "head_b")


def _check_experts(experts: Sequence[Expert]) -> Expert:
    """The first expert, when all are TT-LoRA experts with unique names (of one base model:
    ``ExpertPool._check_fits``)."""
    if not experts:
        raise MoEError("a mixture needs at least one expert")
    first = experts[0]
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise MoEError(f"expert names must be unique, got {names}")
    for expert in experts:
        if expert.config.method != "tt-lora":
            raise MoEError(f"expert {expert.name!r} is a {expert.config.method} expert; "
                           "the mixture stacks TT-LoRA experts only")
    return first


def _open_folder(folder: Path, expected_fingerprint: str | None,
                 reference: str) -> tuple[Expert, _Lazy]:
    """An expert folder's metadata (an Expert without tensors) and where its weights are: the
    store's checks of the JSON, the base model and the weights header, no tensor data read."""
    opened = store.open_expert(folder, expected_fingerprint, reference, history=False)
    return opened.expert, _Lazy(opened, opened.expert.config.rank, opened.expert.config.alpha)
