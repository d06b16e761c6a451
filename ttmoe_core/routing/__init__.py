"""Routers: config, features, variants behind a registry, training, growth, and the out-of-pool detector.

May import: files, runtime, tasks, tt, base, adapters.
"""

from .detector import (COMPONENTS, OpenWorldError, PoolScorer, NgramLM, PoolModel, calibrated, auroc, ood_report,
    fit_temperature, expected_calibration_error)
from .growth import (GrowthError, SOURCES, last_linear, phi_width, cached_outputs, base_outputs, GrownRouter,
    replay_sample, add_expert, cat_rows)
from .ngram import (VARIANT, BUCKETS, MAX_NGRAMS, FLAGS, canonical, ngram_features, text_flags, segment_pools,
    batch_features, NgramFusionRouter, build_ngram_router)
from .registry import (VARIANTS, build, grow, params, state_features, text_features, features_fn, extract_features,
    pool_dense, sweep_layers, sentence_level, balanced, take, routing_splits, recipe_rows, fit)
from .router import (GROW_SOURCES, SURFACE_DIM, RouterError, RouterConfig, surface_features, base_states, Router,
    PaperRouter, LinearRouter, MLPRouter, FusionRouter, ROUTERS, build_router, router_params,
    RouterReport, train_router, evaluate_router, RoutingData, routing_data, router_metrics)

__all__ = ["BUCKETS", "COMPONENTS", "FLAGS", "FusionRouter", "GROW_SOURCES", "GrownRouter",
           "GrowthError", "LinearRouter", "MAX_NGRAMS", "MLPRouter", "NgramFusionRouter",
           "NgramLM", "OpenWorldError", "PaperRouter", "PoolModel", "PoolScorer", "ROUTERS",
           "Router", "RouterConfig", "RouterError", "RouterReport", "RoutingData", "SOURCES",
           "SURFACE_DIM", "VARIANT", "VARIANTS", "add_expert", "auroc", "balanced", "base_outputs",
           "base_states", "batch_features", "build", "build_ngram_router", "build_router",
           "cached_outputs", "calibrated", "canonical", "cat_rows", "evaluate_router",
           "expected_calibration_error", "extract_features", "features_fn", "fit",
           "fit_temperature", "grow", "last_linear", "ngram_features", "ood_report", "params",
           "phi_width", "pool_dense", "recipe_rows", "replay_sample", "router_metrics",
           "router_params", "routing_data", "routing_splits", "segment_pools", "sentence_level",
           "state_features", "surface_features", "sweep_layers", "take", "text_features",
           "text_flags", "train_router"]
