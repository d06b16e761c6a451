"""How a computation runs: local random generators, precision, distributed training, run information (time, machine, load, memory).

May import: the standard library, torch.
"""

from .distributed import (launched_world_size, share, DataParallel, current, is_main_process)
from .precision import (DTYPES, parse_dtype, dtype_name, autocast, cast_frozen)
from .rng import (given_or_seeded, drawing_from, gaussian, batch_rows, Dropout)
from .runinfo import (now, load_average, cpu_name, usable_cores, memory_gib, machine_info, peak_rss_mib, rss_mib)

__all__ = ["DTYPES", "DataParallel", "Dropout", "autocast", "batch_rows", "cast_frozen",
           "cpu_name", "current", "drawing_from", "dtype_name", "gaussian", "given_or_seeded",
           "is_main_process", "launched_world_size", "load_average", "machine_info", "memory_gib",
           "now", "parse_dtype", "peak_rss_mib", "rss_mib", "share", "usable_cores"]
