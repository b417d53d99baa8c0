"""A KV cache for batched greedy decoding: the shared prompt prefix once, no per-step copies.

Two costs dominate batched decoding of a small model on CPU, and neither is compute:

- `DynamicCache` grows by `torch.cat`, copying every layer's whole cache at every step;
  `PreallocatedLayer` writes each step into a buffer sized for the whole generation and
  hands attention a view of the filled part.
- Every evaluation prompt starts with the same chat header and system prompt (45 of ~113
  tokens for GSM8K with the tiny tokenizer). `PrefixCache` computes that prefix once per
  call and copies it into every batch's cache, so each prompt only prefills its own
  suffix. The rows are laid out `[prefix][left padding][suffix]`: the prefix sits at
  positions 0..P-1 in every row, where `generate` (which numbers positions by the
  attention mask) puts it too, so its keys and values, rotary embedding included, are
  the ones a full prefill would have computed.

Only for models whose default cache is made of plain full-attention `DynamicLayer`s
(Llama, Qwen2/3, Mistral without a sliding window, Phi-3, ...); `supports_prefix_cache`
says no for sliding-window, linear-attention and encoder-decoder models, which then take
transformers' own cache.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in buffers of fixed capacity.

    `keys`/`values` are always views of the filled part, so everything transformers does
    with a `DynamicLayer` (sequence length, masks, cropping) keeps working; `update`
    writes in place instead of concatenating.
    """

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int):
        super().__init__()
        self._key_buffer, self._value_buffer = key_buffer, value_buffer
        self.device, self.is_initialized = key_buffer.device, True
        self.set_length(length)

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> PreallocatedLayer:
        """A layer with new buffers of `capacity` positions that start with a copy of `keys`/`values`."""
        filled = keys.shape[-2]
        if capacity < filled:
            raise ValueError(f"capacity {capacity} is smaller than the {filled} cached positions")
        # Zeros, not `new_empty`: masked positions still enter attention as 0 * value, and
        # leftover memory can hold NaN (0 * NaN = NaN; seen as a flaky test).
        key_buffer = keys.new_zeros((*keys.shape[:-2], capacity, keys.shape[-1]))
        value_buffer = values.new_zeros((*values.shape[:-2], capacity, values.shape[-1]))
        key_buffer[..., :filled, :] = keys
        value_buffer[..., :filled, :] = values
        return cls(key_buffer, value_buffer, filled)

    def set_length(self, length: int) -> None:
        """Make the first `length` buffered positions the cache.

        Positions never written hold zeros: the attention mask must hide them.
        """
        self.keys = self._key_buffer[..., :length, :]
        self.values = self._value_buffer[..., :length, :]

    def rows(self, start: int, stop: int) -> PreallocatedLayer:
        """A layer over batch rows [start, stop) of the same buffers: its writes land in this layer's rows."""
        return PreallocatedLayer(self._key_buffer[start:stop], self._value_buffer[start:stop], self.keys.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if not self._is_view_of_buffer() or end > self._key_buffer.shape[-2]:
            # Something replaced the views (batch selection, beam reordering) or the buffers
            # are full: move to buffers twice as large, as a list grows.
            moved = PreallocatedLayer.holding(self.keys, self.values, 2 * end)
            self._key_buffer, self._value_buffer = moved._key_buffer, moved._value_buffer
        self._key_buffer[..., start:end, :] = key_states
        self._value_buffer[..., start:end, :] = value_states
        self.set_length(end)
        return self.keys, self.values

    def _is_view_of_buffer(self) -> bool:
        return (
            self.keys.data_ptr() == self._key_buffer.data_ptr()
            and self.keys.shape[:-2] == self._key_buffer.shape[:-2]
            and self.values.data_ptr() == self._value_buffer.data_ptr()
        )


def supports_prefix_cache(model: PreTrainedModel) -> bool:
    """True if `model`'s default cache is all plain `DynamicLayer`s and it takes position ids."""
    if model.config.is_encoder_decoder or not model._supports_default_dynamic_cache():
        return False
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@dataclass(frozen=True)
class PrefixCache:
    """Keys and values (one batch row) of a token prefix that every prompt of a call shares."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def build(cls, model: PreTrainedModel, prompts: Sequence[Sequence[int]]) -> PrefixCache | None:
        """The cache of the longest prefix shared by all `prompts`, or None if there is none.

        At least one token of every prompt is left out of the prefix: the model has to
        read each prompt's last token to produce its first completion token.
        """
        shared = os.path.commonprefix([list(p) for p in prompts])[: min(len(p) for p in prompts) - 1]
        if not shared:
            return None
        with torch.inference_mode():
            output = model(input_ids=torch.tensor([shared], device=model.device), use_cache=True)
        return cls(ids=list(shared), layers=[(layer.keys, layer.values) for layer in output.cache.layers])

    def for_batch(self, batch_size: int, capacity: int) -> Cache:
        """A cache for `batch_size` rows holding the prefix in each, with room for `capacity` positions."""
        return Cache(
            layers=[
                PreallocatedLayer.holding(
                    keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1), capacity
                )
                for keys, values in self.layers
            ]
        )
