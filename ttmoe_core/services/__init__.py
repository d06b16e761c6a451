"""What the app and CLI call: the workspace (every user file operation), the job runner, the
workflows (training an expert or a router, build-demo), what the pages show (views) and figures.

May import: everything below report.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".figures": "ACCENT, FONT, INPUT_CORE, MUTED, OUTPUT_CORE, apply_layout, compact_count, "
                "confusion_heatmap, delta_w_norms, loss_curve, method_comparison_bar, metric_bar, "
                "normalise_rows, params_bar, pipeline_diagram, probability_bar, router_probs_bar, "
                "short_layer_name, singular_values, tt_cores_figure",
    ".jobs": "Job, JobRegistry",
    ".views": "confidence_words, decision_words, expert_info, expert_spectra, fmt_date, "
              "folder_experts, folder_packs, holdout_words, lora_reference, pack_base_model, "
              "pack_summary, "
              "parse_shape, quality_note, shape_text, stamp, training_caption",
    ".workflows": "CHECKPOINTS, MIN_UPLOAD_ROWS, UPLOAD_SEED, build_demo, finished_part, "
                  "pull_model_job, read_upload, save_trained_router, split_upload, "
                  "start_model_pull, start_router_training, start_training, train_expert_job, "
                  "train_router_job",
    ".workspace": "EXPERT_ENTRIES, PACK_ENTRIES, PACKS, REPO_ROOT, RESERVED, UNEXPECTED, "
                  "Workspace, WorkspaceError, default_pack, has_router, is_pack, list_experts, "
                  "list_packs, pack_experts, pack_file, router_file, shipped_packs, sub_folders, "
                  "sub_workspace",
})

