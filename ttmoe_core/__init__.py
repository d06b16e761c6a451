"""TT-LoRA MoE: tensor-train LoRA experts on a frozen transformer behind a sparse router.

Modules: ``tt`` (TT math), ``adapters`` (TT-LoRA layers, injection), ``backbone`` (base model),
``tasks`` (data), ``experts`` (train/evaluate one expert), ``store`` (disk format), ``budget``
(parameter counts), ``router`` / ``moe`` (routing and the mixture), ``bench`` and ``cli``.
"""

__version__ = "0.1.0"
