"""What the app and CLI call: the workspace (every user file operation), the job runner, the
workflows (training an expert or a router, build-demo), what the pages show (views) and figures.

May import: everything below report.
"""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    ".figures": "ACCENT, FONT, INPUT_CORE, MUTED, OUTPUT_CORE, apply_layout, compact_count, "
                "confusion_heatmap, delta_w_norms, loss_curve, method_comparison_bar, metric_bar, "
                "normalise_rows, params_bar, pipeline_diagram, probability_bar, router_probs_bar, "
                "short_layer_name, singular_values, tt_cores_figure",
    ".jobs": "Job, JobRegistry",
    ".views": "confidence_words, decision_words, expert_info, expert_spectra, fmt_date, "
              "folder_experts, folder_packs, holdout_words, lora_reference, pack_summary, "
              "parse_shape, quality_note, shape_text, stamp, training_caption",
    ".workflows": "CHECKPOINTS, MIN_UPLOAD_ROWS, UPLOAD_SEED, build_demo, finished_part, "
                  "read_upload, save_trained_router, split_upload, start_router_training, "
                  "start_training, train_expert_job, train_router_job",
    ".workspace": "EXPERT_ENTRIES, PACK_ENTRIES, PACKS, REPO_ROOT, RESERVED, UNEXPECTED, "
                  "Workspace, WorkspaceError, default_pack, has_router, is_pack, list_experts, "
                  "list_packs, pack_experts, pack_file, router_file, sub_folders, sub_workspace",
})

__all__ = ["ACCENT", "CHECKPOINTS", "EXPERT_ENTRIES", "FONT", "INPUT_CORE", "Job", "JobRegistry",
           "MIN_UPLOAD_ROWS", "MUTED", "OUTPUT_CORE", "PACKS", "PACK_ENTRIES", "REPO_ROOT",
           "RESERVED", "UNEXPECTED", "UPLOAD_SEED", "Workspace", "WorkspaceError", "apply_layout",
           "build_demo", "compact_count", "confidence_words", "confusion_heatmap", "decision_words",
           "default_pack", "delta_w_norms", "expert_info", "expert_spectra", "finished_part",
           "fmt_date", "folder_experts", "folder_packs", "has_router", "holdout_words", "is_pack",
           "list_experts", "list_packs", "lora_reference", "loss_curve", "method_comparison_bar",
           "metric_bar", "normalise_rows", "pack_experts", "pack_file", "pack_summary",
           "params_bar", "parse_shape", "pipeline_diagram", "probability_bar", "quality_note",
           "read_upload", "router_file", "router_probs_bar", "save_trained_router", "shape_text",
           "short_layer_name", "singular_values", "split_upload", "stamp", "start_router_training",
           "start_training", "sub_folders", "sub_workspace", "train_expert_job", "train_router_job",
           "training_caption", "tt_cores_figure"]
