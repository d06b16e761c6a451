"""Tasks: the registry (``registry``), data loading (``loading``) and metrics (``metrics``).

Every task becomes :class:`TaskData`, (text, text_pair, label) rows; the names below are the
public API (``from ttmoe_core import tasks; tasks.load_task(...)``).

May import: errors and files only (data sets, no model).
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".loading": "DATA_DIR_ENV, HUB, LOGICAL_SPLITS, SPLIT_SEED, SPLIT_TRAIN_FRACTION, "
                "available_tasks, default_data_dir, load_file, load_task",
    ".metrics": "compute_metrics, primary_metric",
    ".registry": "DEMO_TASKS, KINDS, METRICS, TASKS, DataError, TaskData, TaskSpec, get_task, "
                 "render_example",
})

