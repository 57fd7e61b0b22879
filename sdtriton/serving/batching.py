"""Batching rules of the component models: requests queued together run as one batch, then split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sdtriton.components import TensorSpec


def to_spec_rank(tensor: TensorSpec, array: np.ndarray) -> np.ndarray:
    """A per-item scalar travels as [batch, 1] (Triton needs item dims); the network wants [batch]."""
    if len(tensor.axes) == 1 and array.ndim == 2:
        return array.reshape(array.shape[0])
    return array


def concatenate_requests(
    requests: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Joins the inputs of several requests along the batch axis; returns them and each request's size."""
    sizes = [int(request[names[0]].shape[0]) for request in requests]
    if len(requests) == 1:
        return dict(requests[0]), sizes
    joined = {name: np.concatenate([request[name] for request in requests], axis=0) for name in names}
    return joined, sizes


def can_concatenate(requests: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> bool:
    """True if every request has the same item shape and dtype for every input."""
    first = requests[0]
    return all(
        request[name].shape[1:] == first[name].shape[1:] and request[name].dtype == first[name].dtype
        for request in requests[1:]
        for name in names
    )


def split_outputs(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Splits batched outputs back into one dict per request, in request order."""
    boundaries = np.cumsum(sizes)[:-1]
    per_name = {name: np.split(array, boundaries, axis=0) for name, array in outputs.items()}
    return [{name: parts[index] for name, parts in per_name.items()} for index in range(len(sizes))]
