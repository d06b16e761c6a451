"""Routers: config, features, variants behind a registry, training, growth, and the out-of-pool detector.

``config`` (RouterConfig), ``registry`` (the variants by name: build, grow), ``features`` (what
a variant reads), ``variants`` (paper / linear / mlp / fusion) and ``ngram`` (the ngram variant),
``train`` (training, scoring, routing data, the layer sweep), ``recipe`` (the all-rows training
recipe), ``growth`` (experts appended to a trained router), ``detector`` (out-of-pool inputs).

May import: errors, files, runtime, tasks, tt, base, adapters.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "..errors": "RouterError",
    ".config": "BUCKET_RANGE, BUCKETS, VARIANTS, RouterConfig, check_buckets",
    ".detector": "COMPONENTS, NgramLM, OpenWorldError, PoolModel, PoolScorer, auroc, calibrated, "
                 "expected_calibration_error, fit_temperature, ood_report",
    ".features": "SURFACE_DIM, base_states, batch_features, extract_features, pooled_states, "
                 "state_features, surface_features, text_features",
    ".growth": "SOURCES as GROW_SOURCES, SOURCES, GrownRouter, GrowthError, base_outputs, "
               "cached_outputs, cat_rows, grow_router, last_linear, phi_width, replay_sample",
    ".ngram": "FLAGS, MAX_NGRAMS, NgramFusionRouter, canonical, ngram_features, "
              "pool_dense, segment_pools, text_flags",
    ".recipe": "balanced, fit, recipe_rows, routing_splits, sentence_level, take",
    ".registry": "VariantSpec, build, grow, known_variants, params, register_variant, "
                 "variant_spec",
    ".train": "RouterReport, RoutingData, evaluate_router, router_metrics, routing_data, "
              "sweep_layers, train_router",
    ".variants": "ROUTERS, FusionRouter, LinearRouter, MLPRouter, PaperRouter, Router",
})

