"""The committed training curve reads as a timeline and ``sdtriton shapes-curve`` draws it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sdtriton.cli import main
from sdtriton.shapes.curve import CURVE_ATTRIBUTES, read_curve

COMMITTED_CURVE = Path(__file__).resolve().parents[2] / "docs" / "shapes_training_curve.csv"


def test_the_committed_curve_is_a_timeline_of_accuracies() -> None:
    points = read_curve(COMMITTED_CURVE)
    assert len({point.stage for point in points}) >= 2
    elapsed = [point.elapsed_s for point in points]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == len(elapsed)
    for point in points:
        assert all(0.0 <= point.accuracy[attribute] <= 1.0 for attribute in CURVE_ATTRIBUTES)


def test_shapes_curve_command_writes_a_png(tmp_path: Path) -> None:
    output = tmp_path / "curve.png"
    assert main(["shapes-curve", str(COMMITTED_CURVE), "-o", str(output)]) == 0
    with Image.open(output) as image:
        assert image.format == "PNG"
        assert image.width > 600 and image.height > 300
