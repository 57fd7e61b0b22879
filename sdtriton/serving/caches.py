"""The engine's caches: bounded LRU maps and the keys that say when two requests give the same image.

- The response cache answers a non-streaming request whose every seed the client sent, from the images an
  identical earlier request got. Its key (:func:`response_key`) is everything that determines the images: the
  validated parameters of every image (seed, steps, guidance, size, scheduler, refiner share, strength), the
  token ids of prompt and negative prompt per text encoder, whether a negative prompt was sent, and the input
  image's digest. The model is implicit: one engine serves one repository. Triton's own response cache cannot be
  used: it hashes the inputs present, so two unseeded requests (which must get two different images) would share
  an entry.
- The text-embedding cache keeps one text-encoder output row per (encoder, token ids), so a repeated prompt, or
  the common negative prompt, skips the text encoder.

Pure code: no ``pb_utils``; the values are whatever the engine stores (numpy images, torch rows).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

import numpy as np

from sdtriton.serving.conditioning import ImageRequest

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Cache names in the metrics' ``cache`` label (sdtriton_cache_lookups_total, sdtriton_cache_hits_total).
RESPONSE_CACHE = "response"
TEXT_EMBEDDING_CACHE = "text_embedding"


class LruCache(Generic[K, V]):
    """A map holding at most ``capacity`` units of cost, evicting the least recently used entries first.

    Thread-safe. A capacity of 0 turns it off: nothing is stored and every lookup misses. A value costlier than
    the whole capacity is not stored (it would evict everything and then itself).

    Args:
        capacity: the most cost held at once (bytes, entries: whatever ``cost`` counts).
        cost: a value's cost; each entry costs 1 when omitted.
    """

    def __init__(self, *, capacity: int, cost: Callable[[V], int] | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be at least 0, got {capacity}")
        self.capacity = capacity
        self._cost = cost or (lambda _value: 1)
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def held(self) -> int:
        """The cost held now."""
        with self._lock:
            return self._held

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> None:
        """Stores ``value`` as the most recently used entry, evicting the least recently used ones to fit it."""
        cost = self._cost(value)
        if not self.enabled or cost > self.capacity:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= old[1]
            while self._entries and self._held + cost > self.capacity:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._held -= evicted
            self._entries[key] = (value, cost)
            self._held += cost


def _ids_key(ids: Mapping[str, np.ndarray]) -> tuple[tuple[str, bytes], ...]:
    return tuple((encoder, np.asarray(ids[encoder], dtype=np.int64).tobytes()) for encoder in sorted(ids))


def _pixels_key(pixels: np.ndarray | None) -> tuple[tuple[int, ...], bytes] | None:
    """An input image by its shape and digest (the key holds no copy of the pixels)."""
    if pixels is None:
        return None
    return pixels.shape, hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).digest()


def response_key(images: Sequence[ImageRequest]) -> Hashable:
    """Everything that determines a request's images, in order; equal keys give byte-identical images.

    Only meaningful for a request whose every seed the client sent: an unseeded image's seed was drawn for it.
    """
    return tuple(
        (
            image.params,
            image.negative_given,
            _ids_key(image.prompt_ids),
            _ids_key(image.negative_ids),
            _pixels_key(image.input_image),
            _pixels_key(image.mask_image),
        )
        for image in images
    )


def text_row_key(encoder: str, ids: np.ndarray, lora_scales: np.ndarray | None = None) -> Hashable:
    """The key of one text-encoder row: the encoder, the row's token ids and, for an encoder exported with LoRA
    adapters, the row's adapter weights (which adapter, at what scale)."""
    lora = None if lora_scales is None else np.asarray(lora_scales, dtype=np.float32).tobytes()
    return (encoder, np.asarray(ids, dtype=np.int64).tobytes(), lora)


def images_nbytes(images: Sequence[np.ndarray]) -> int:
    return sum(int(image.nbytes) for image in images)
