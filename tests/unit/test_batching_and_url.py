"""Pure helpers: the component models' batching rules and the client's URL parsing."""

from __future__ import annotations

import numpy as np
import pytest

from sdtriton.client import parse_url
from sdtriton.components import UNET
from sdtriton.serving.batching import can_concatenate, concatenate_requests, split_outputs, to_spec_rank


def test_requests_join_and_split_back_in_order() -> None:
    requests = [{"x": np.full((n, 2), n, dtype=np.float32)} for n in (1, 3, 2)]
    joined, sizes = concatenate_requests(requests, ["x"])
    assert joined["x"].shape == (6, 2) and sizes == [1, 3, 2]
    parts = split_outputs({"y": joined["x"] * 10}, sizes)
    for request, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], request["x"] * 10)


def test_different_item_shapes_do_not_join() -> None:
    a = {"x": np.zeros((1, 4, 8, 8), np.float32)}
    b = {"x": np.zeros((1, 4, 8, 16), np.float32)}
    assert can_concatenate([a, a], ["x"])
    assert not can_concatenate([a, b], ["x"])


def test_scalar_per_item_is_flattened_for_the_network() -> None:
    assert to_spec_rank(UNET.tensor("timestep"), np.zeros((3, 1), np.float32)).shape == (3,)
    assert to_spec_rank(UNET.tensor("sample"), np.zeros((3, 4, 8, 8), np.float32)).shape == (3, 4, 8, 8)


@pytest.mark.parametrize(
    ("url", "protocol", "address"),
    [
        ("http://127.0.0.1:8000", "http", "127.0.0.1:8000"),
        ("grpc://localhost:8001", "grpc", "localhost:8001"),
        ("127.0.0.1:9000", "http", "127.0.0.1:9000"),
        ("grpc://[::1]:8001", "grpc", "[::1]:8001"),
    ],
)
def test_urls(url: str, protocol: str, address: str) -> None:
    endpoint = parse_url(url)
    assert (endpoint.protocol, endpoint.address) == (protocol, address)


@pytest.mark.parametrize("url", ["https://host:1", "grpc://host", "ftp://a:1"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)
