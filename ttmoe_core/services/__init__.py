"""What the app and CLI call: the workspace (every user file operation), jobs, workflows and figures.

May import: everything below report.
"""

from .figures import (ACCENT, MUTED, INPUT_CORE, OUTPUT_CORE, FONT, apply_layout, probability_bar, router_probs_bar,
    normalise_rows, confusion_heatmap, loss_curve, compact_count, params_bar, method_comparison_bar,
    tt_cores_figure, short_layer_name, delta_w_norms, singular_values, metric_bar, pipeline_diagram)
from .jobs import (log, Job, JobRegistry, CHECKPOINTS, train_expert_job, train_router_job, save_trained_router)
from .workspace import (PACKS, UNEXPECTED, REPO_ROOT, WorkspaceError, default_pack, list_experts, list_packs, Workspace,
    PACK_ENTRIES, EXPERT_ENTRIES)

__all__ = ["ACCENT", "CHECKPOINTS", "EXPERT_ENTRIES", "FONT", "INPUT_CORE", "Job", "JobRegistry",
           "MUTED", "OUTPUT_CORE", "PACKS", "PACK_ENTRIES", "REPO_ROOT", "UNEXPECTED", "Workspace",
           "WorkspaceError", "apply_layout", "compact_count", "confusion_heatmap", "default_pack",
           "delta_w_norms", "list_experts", "list_packs", "log", "loss_curve",
           "method_comparison_bar", "metric_bar", "normalise_rows", "params_bar",
           "pipeline_diagram", "probability_bar", "router_probs_bar", "save_trained_router",
           "short_layer_name", "singular_values", "train_expert_job", "train_router_job",
           "tt_cores_figure"]
