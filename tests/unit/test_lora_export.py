"""The export's LoRA layers: each row of one call gets its own adapter and weight, as peft computes it alone."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from sdtriton.export import ExportOptionError, LoraSource
from sdtriton.export.lora import batch_lora_layers, lora_scales_set


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1, stride=2)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(tokens), self.conv(image)


def _adapted(names: tuple[str, ...]) -> torch.nn.Module:
    from peft import inject_adapter_in_model

    torch.manual_seed(0)
    net = _Net()
    for index, name in enumerate(names):
        torch.manual_seed(10 + index)
        config = LoraConfig(
            r=2 + index, lora_alpha=3.0 + index, target_modules=["proj", "conv"], init_lora_weights=False
        )
        net = inject_adapter_in_model(config, net, adapter_name=name)
    return net


def _peft_alone(net: torch.nn.Module, name: str | None, scale: float, *inputs: torch.Tensor):
    """peft's own forward with one adapter at ``scale`` (diffusers' set_adapters), or none."""
    for module in net.modules():
        if isinstance(module, LoraLayer):
            module.enable_adapters(name is not None)
            if name is not None:
                module.set_adapter([name])
                module.set_scale(name, scale)
    return net(*inputs)


def test_each_row_matches_peft_with_its_own_adapter_and_scale() -> None:
    names = ("a", "b")
    rows = [("a", 1.0), ("b", 0.5), (None, 1.0), ("a", -2.0)]
    tokens, image = torch.randn(len(rows), 7, 6), torch.randn(len(rows), 3, 8, 8)
    reference = _adapted(names)
    expected = [
        _peft_alone(reference, name, scale, tokens[row : row + 1], image[row : row + 1])
        for row, (name, scale) in enumerate(rows)
    ]
    batched = _adapted(names)
    scales = batch_lora_layers(batched, list(names), model_name="net")
    weights = torch.tensor([[scale if name == adapter else 0.0 for adapter in names] for name, scale in rows])
    with torch.no_grad(), lora_scales_set(scales, weights):
        proj, conv = batched(tokens, image)
    for row, (want_proj, want_conv) in enumerate(expected):
        torch.testing.assert_close(proj[row : row + 1], want_proj, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(conv[row : row + 1], want_conv, rtol=1e-5, atol=1e-6)
    # Outside a traced call (no weights set) the layers are the base network.
    base = _peft_alone(_adapted(names), None, 1.0, tokens, image)
    torch.testing.assert_close(batched(tokens, image)[0], base[0])
    # ...which the adapted rows are not, and the adapter-less row is.
    assert not torch.allclose(proj[0], base[0][0], atol=1e-3)
    torch.testing.assert_close(proj[2], base[0][2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", ["style", "=x.safetensors", "style=", "sty le=x.safetensors", "a/b=x.safetensors"])
def test_a_lora_option_is_name_equals_path_with_a_plain_name(text: str) -> None:
    with pytest.raises(ExportOptionError, match=r"^lora: "):
        LoraSource.parse(text)
    assert LoraSource.parse("my-style.v2=/loras/a=b.safetensors").path.name == "a=b.safetensors"
