"""What the app and CLI call: the workspace (every user file operation), jobs, workflows and figures.

May import: everything below report.
"""

from .figures import (
    ACCENT,
    FONT,
    INPUT_CORE,
    MUTED,
    OUTPUT_CORE,
    apply_layout,
    compact_count,
    confusion_heatmap,
    delta_w_norms,
    loss_curve,
    method_comparison_bar,
    metric_bar,
    normalise_rows,
    params_bar,
    pipeline_diagram,
    probability_bar,
    router_probs_bar,
    short_layer_name,
    singular_values,
    tt_cores_figure,
)
from .jobs import (
    CHECKPOINTS,
    Job,
    JobRegistry,
    log,
    save_trained_router,
    train_expert_job,
    train_router_job,
)
from .workspace import (
    EXPERT_ENTRIES,
    PACK_ENTRIES,
    PACKS,
    REPO_ROOT,
    UNEXPECTED,
    Workspace,
    WorkspaceError,
    default_pack,
    list_experts,
    list_packs,
)

__all__ = ["ACCENT", "CHECKPOINTS", "EXPERT_ENTRIES", "FONT", "INPUT_CORE", "Job", "JobRegistry",
           "MUTED", "OUTPUT_CORE", "PACKS", "PACK_ENTRIES", "REPO_ROOT", "UNEXPECTED", "Workspace",
           "WorkspaceError", "apply_layout", "compact_count", "confusion_heatmap", "default_pack",
           "delta_w_norms", "list_experts", "list_packs", "log", "loss_curve",
           "method_comparison_bar", "metric_bar", "normalise_rows", "params_bar",
           "pipeline_diagram", "probability_bar", "router_probs_bar", "save_trained_router",
           "short_layer_name", "singular_values", "train_expert_job", "train_router_job",
           "tt_cores_figure"]
