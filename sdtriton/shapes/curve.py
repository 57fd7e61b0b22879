"""``sdtriton shapes-curve``: the training curve (judged accuracy per attribute against training time) as a PNG."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

CURVE_ATTRIBUTES = ("colour", "background", "shape", "held_out_all")


@dataclass(frozen=True)
class CurvePoint:
    stage: str
    step: int
    elapsed_s: float
    accuracy: dict[str, float]


def read_curve(path: Path) -> list[CurvePoint]:
    """Rows of ``docs/shapes_training_curve.csv``: stage, step, elapsed_s (whole training), loss, attributes."""
    with path.open(newline="") as handle:
        return [
            CurvePoint(
                stage=row["stage"],
                step=int(row["step"]),
                elapsed_s=float(row["elapsed_s"]),
                accuracy={attribute: float(row[attribute]) for attribute in CURVE_ATTRIBUTES},
            )
            for row in csv.DictReader(handle)
        ]


def plot_curve(points: list[CurvePoint], output: Path) -> Path:
    """One line per attribute against hours of training on this CPU; stage boundaries dashed and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.8))
    hours = [point.elapsed_s / 3600 for point in points]
    for attribute in CURVE_ATTRIBUTES:
        axis.plot(hours, [100 * point.accuracy[attribute] for point in points], "o-", markersize=3, label=attribute)
    for index, point in enumerate(points):
        if index == 0 or point.stage != points[index - 1].stage:
            axis.axvline(hours[index], color="grey", linestyle="--", linewidth=0.8)
            axis.annotate(point.stage, (hours[index], 2), rotation=90, fontsize=6, va="bottom", ha="right")
    axis.set_xlabel("training time on the 2-core CPU (hours, UNet + text encoder stages)")
    axis.set_ylabel("judged right, in-process EMA check (%)")
    axis.set_ylim(0, 102)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
