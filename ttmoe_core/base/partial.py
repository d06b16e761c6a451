"""Running a base model's layer stack in parts: layers 0..k only, or from layer k to the end.

A router reads the hidden states of layers 0..k (cost k/L of a pass) and the mixture's expert pass
may continue from the state after layer k instead of starting again from the embeddings. Two
families of layer stacks run this way, each through the model's own modules and helpers (no
forward is replaced or rebound):

- BERT-family encoders (``embeddings`` + ``encoder.layer``): the additive padding mask of
  ``get_extended_attention_mask``;
- LLaMA-style decoders (``embed_tokens`` + ``layers`` + ``norm`` + ``rotary_emb``: llama, mistral,
  qwen2, ...): the model's own rotary embedding module and transformers' causal-mask builders
  (``masking_utils.create_causal_mask`` / ``create_sliding_window_causal_mask``, chosen per layer
  as the model's forward does), positions 0..T-1 as in the model's forward without a cache.

States are numbered as ``output_hidden_states`` numbers them: state 0 is the embeddings, state i
the output of layer i; a decoder's state L (the last) is after its final norm, as in transformers.
Other architectures run the whole model with ``output_hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def is_layered_encoder(model: nn.Module) -> bool:
    """A BERT-family encoder (``embeddings`` + ``encoder.layer``): its layers can run one by one."""
    return hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")


def is_layered_decoder(model: nn.Module) -> bool:
    """A LLaMA-style decoder stack (llama, mistral, qwen2, ...) whose layers can run one by one."""
    return all(hasattr(model, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


def runs_in_parts(model: nn.Module) -> bool:
    """Layers 0..k can run alone and a pass can continue from layer k (``hidden_states``,
    ``continue_layers``)."""
    return is_layered_encoder(model) or is_layered_decoder(model)


def layer_mask(model: nn.Module, attention_mask: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor | None:
    """The additive mask [B, 1, 1, T] a BERT layer takes for ``attention_mask`` [B, T]; None when
    no position is padding (as the model's own forward does for its SDPA attention)."""
    if bool(attention_mask.all()):
        return None
    return model.get_extended_attention_mask(attention_mask, attention_mask.shape, dtype=dtype)


@dataclass(frozen=True)
class _DecoderContext:
    """What every decoder layer of one batch takes besides the hidden state."""
    masks: dict[str, object]        # "full_attention" / "sliding_attention" -> mask (or None)
    position_ids: torch.Tensor      # [1, T]
    cache_position: torch.Tensor    # [T]
    position_embeddings: tuple      # (cos, sin), each [1, T, head_dim]


def _decoder_context(model: nn.Module, hidden: torch.Tensor,
                     attention_mask: torch.Tensor) -> _DecoderContext:
    """Masks and rotary embeddings of a batch, built by the model's own helpers as its forward
    builds them (no cache; positions 0..T-1)."""
    # heavy: transformers, loaded on first use
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    cache_position = torch.arange(hidden.shape[1], device=hidden.device)      # [T]
    position_ids = cache_position.unsqueeze(0)                                # [1, T]
    kwargs = dict(config=model.config, input_embeds=hidden, attention_mask=attention_mask,
                  cache_position=cache_position, past_key_values=None, position_ids=position_ids)
    masks = {"full_attention": create_causal_mask(**kwargs)}
    if any(_mask_kind(model, layer) == "sliding_attention" for layer in model.layers):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return _DecoderContext(masks, position_ids, cache_position,
                           model.rotary_emb(hidden, position_ids))


def _mask_kind(model: nn.Module, layer: nn.Module) -> str:
    """Which mask a decoder layer takes: its own ``attention_type`` (qwen2 and newer), else the
    model-wide sliding window when the config sets one (mistral), else full causal attention."""
    kind = getattr(layer, "attention_type", None)
    if kind is not None:
        return kind
    return ("sliding_attention" if getattr(model.config, "sliding_window", None) is not None
            else "full_attention")


def _run_decoder_layers(model: nn.Module, hidden: torch.Tensor, context: _DecoderContext,
                        start: int, stop: int) -> list[torch.Tensor]:
    """Outputs of decoder layers start..stop-1 (each [B, T, H]), the last one final-normed when
    ``stop`` is the model's last layer."""
    num_layers = model.config.num_hidden_layers
    out = []
    for layer in model.layers[start:stop]:
        hidden = layer(hidden, attention_mask=context.masks[_mask_kind(model, layer)],
                       position_ids=context.position_ids, past_key_values=None, use_cache=False,
                       cache_position=context.cache_position,
                       position_embeddings=context.position_embeddings)
        if isinstance(hidden, tuple):      # older layer classes return (hidden, ...)
            hidden = hidden[0]
        out.append(hidden)
    if out and stop == num_layers:
        out[-1] = model.norm(out[-1])
    return out


def hidden_states(model: nn.Module, batch: dict[str, torch.Tensor],
                  upto_layer: int | None = None) -> list[torch.Tensor]:
    """Hidden states [embeddings, layer 1, ..., layer k] (each [B, T, H]), numbered as
    ``output_hidden_states`` numbers them (a decoder's state L is final-normed).

    For BERT-family encoders and LLaMA-style decoders only the first ``upto_layer`` layers run
    (cost k/L of a pass); other architectures run the whole model with ``output_hidden_states``.
    """
    num_layers = model.config.num_hidden_layers
    k = num_layers if upto_layer is None else upto_layer
    if not 0 <= k <= num_layers:
        raise ValueError(f"layer {k} out of range 0..{num_layers}")
    if is_layered_encoder(model):
        h = model.embeddings(input_ids=batch["input_ids"],
                             token_type_ids=batch.get("token_type_ids"))
        mask = layer_mask(model, batch["attention_mask"], h.dtype)
        states = [h]
        for layer in model.encoder.layer[:k]:
            h = layer(h, attention_mask=mask)[0]
            states.append(h)
        return states
    if is_layered_decoder(model):
        h = model.embed_tokens(batch["input_ids"])                              # [B, T, H]
        context = _decoder_context(model, h, batch["attention_mask"])
        return [h] + _run_decoder_layers(model, h, context, 0, k)
    out = model(**batch, output_hidden_states=True)
    return list(out.hidden_states[: k + 1])


def continue_layers(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                    start: int) -> torch.Tensor:
    """The last hidden state [B, T, H] (``last_hidden_state`` of the model's forward) from
    ``hidden`` [B, T, H], the state after layer ``start`` (``hidden_states(model, batch,
    start)[-1]``): layers start..L-1 run, the prefix is not computed again."""
    num_layers = model.config.num_hidden_layers
    if not 0 <= start <= num_layers:
        raise ValueError(f"layer {start} out of range 0..{num_layers}")
    if is_layered_encoder(model):
        mask = layer_mask(model, attention_mask, hidden.dtype)
        for layer in model.encoder.layer[start:]:
            hidden = layer(hidden, attention_mask=mask)[0]
        return hidden
    if is_layered_decoder(model):
        if start == num_layers:          # state L is already the final-normed one
            return hidden
        context = _decoder_context(model, hidden, attention_mask)
        return _run_decoder_layers(model, hidden, context, start, num_layers)[-1]
    raise ValueError("only BERT-family encoders and LLaMA-style decoders can continue a pass "
                     "from a layer")
