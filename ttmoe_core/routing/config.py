"""A router's configuration (``RouterConfig``), serialised as ``router_config.json`` in a pack.

Light on purpose (no torch): the CLI builds and checks one before any model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import RouterError

VARIANTS = ("paper", "linear", "mlp", "fusion", "ngram")   # shipped (``variants``, ``ngram``)
BUCKETS = 1 << 16                  # the ngram router's hash buckets per block (its default)
BUCKET_RANGE = (1 << 8, 1 << 20)   # allowed bucket counts: powers of two in this range


def check_buckets(buckets: object) -> int:
    """``buckets`` when it is a power of two in ``BUCKET_RANGE``; RouterError otherwise."""
    low, high = BUCKET_RANGE
    ok = (isinstance(buckets, int) and not isinstance(buckets, bool) and low <= buckets <= high
          and buckets & (buckets - 1) == 0)
    if not ok:
        raise RouterError(f"n-gram buckets must be a power of two from {low:,} to {high:,}, "
                          f"got {buckets!r}")
    return buckets


@dataclass
class RouterConfig:
    variant: str = "fusion"
    layer: int | None = 2          # k: deepest base layer read (None: last layer; paper: last)
    hidden: int = 256              # MLP width (mlp, fusion, ngram)
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    seed: int = 0
    max_length: int = 128
    added_experts: int = 0         # experts appended later by growth (registry.grow), not retrained
    grow_source: str = "hidden"    # what their logits read (growth.base_outputs)
    buckets: int = BUCKETS         # ngram: hash buckets per block, table [4·buckets, E]; a file
    #                                without the key (older packs) has the default

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "RouterConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise RouterError(f"unknown router config keys {sorted(unknown)}")
        return cls(**dict(data))

    def resolved(self, num_layers: int) -> "RouterConfig":
        """The config with its layer fixed for a base model of ``num_layers`` layers (None, or a
        variant that reads the last layer only: ``num_layers``); RouterError for an unknown
        variant, a layer out of range, bad growth settings or bad n-gram buckets."""
        from . import growth, registry  # heavy: imports torch; a config stays light for the CLI
        entry = registry.variant_spec(self.variant)
        layer = num_layers if (self.layer is None or entry.last_layer_only) else int(self.layer)
        if not 0 <= layer <= num_layers:
            raise RouterError(f"router layer {layer} out of range 0..{num_layers}")
        if self.added_experts < 0 or self.grow_source not in growth.SOURCES:
            raise RouterError(f"bad growth settings: {self.added_experts} added experts reading "
                              f"{self.grow_source!r} (use one of {', '.join(growth.SOURCES)})")
        check_buckets(self.buckets)
        return RouterConfig(**{**self.to_dict(), "layer": layer})
