"""How a computation runs: local random generators, precision, distributed training, run information (time, machine, load, memory), log filters, run tracking (trackio, TensorBoard).

May import: the standard library, torch.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".distributed": "DataParallel, current, is_main_process, launched_world_size, share",
    ".logs": "without_log_line",
    ".precision": "DTYPES, autocast, cast_frozen, dtype_name, parse_dtype",
    ".rng": "Dropout, batch_rows, drawing_from, gaussian, given_or_seeded",
    ".tracking": "PROJECT, TRACK_DIR_ENV, TRACK_ENV, TRACKERS, Run, Tracking, default_tracker, "
                 "event_metrics, open_run, tracked",
    ".runinfo": "cpu_name, load_average, machine_info, memory_gib, now, peak_rss_mib, rss_mib, "
                "usable_cores",
})

