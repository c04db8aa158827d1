"""The pictures of data_tools.py, as PNG files drawn with matplotlib (Agg backend: no display needed).

- `verb_sunburst`: the two-level pie of the Alpaca data figure: the top root verbs on the inner ring, each
  verb's commonest direct objects on the outer ring, wedge sizes proportional to counts.
- `length_histograms`: words (or tokens) per instruction, input and output, one outline per data set; a panel
  of long texts has a log x axis and says so in its label.
- `score_histogram`: how many examples got each rating 0-5.
"""

from __future__ import annotations

import io
import math

import numpy as np

from alpaca import files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str) -> None:
    """Write the figure as a PNG atomically (files.write_atomically) and close it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    files.write_atomically(path, buffer.getvalue())


def _radial_label(ax, text: str, theta1: float, theta2: float, radius: float, size: float) -> None:
    """Write `text` along the radius through the middle of a wedge (angles in degrees), upright when possible."""
    angle = (theta1 + theta2) / 2
    x, y = radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle))
    rotation = angle if -90 <= ((angle + 180) % 360) - 180 <= 90 else angle + 180
    ax.text(x, y, text, rotation=rotation, rotation_mode="anchor", ha="center", va="center", fontsize=size)


def verb_sunburst(top: list[dict], path: str, title: str) -> None:
    """The Alpaca-style verb/object pie from `top_verb_objects(...)["top"]` ([{"verb", "objects": [[noun, n]]}]).

    Inner ring: each verb, sized by the sum of its shown objects' counts, so that the outer ring (its objects)
    lines up with it. Labels are written radially inside the wedges; very thin wedges get none.
    """
    plt = _pyplot()
    verbs = [entry for entry in top if entry["objects"]]
    figure, ax = plt.subplots(figsize=(7, 7))
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    if not verbs:
        ax.text(0, 0, "no verb-object pairs found", ha="center", va="center")
        save_figure(figure, path)
        return
    colormap = plt.get_cmap("tab20")
    inner_sizes = [sum(n for _, n in entry["objects"]) for entry in verbs]
    total = sum(inner_sizes)
    inner_colors = [colormap(i % 20) for i in range(len(verbs))]
    outer_sizes, outer_colors, outer_labels = [], [], []
    for color, entry in zip(inner_colors, verbs, strict=True):
        for j, (noun, count) in enumerate(entry["objects"]):
            outer_sizes.append(count)
            shade = 0.35 + 0.15 * j  # lighter shades of the verb's colour, one per object
            outer_colors.append(tuple(c + (1 - c) * shade for c in color[:3]))
            outer_labels.append(noun)
    edge = {"edgecolor": "white", "linewidth": 0.8}
    inner, _ = ax.pie(inner_sizes, radius=0.55, colors=inner_colors, startangle=90, counterclock=False,
                      wedgeprops={"width": 0.35, **edge})
    outer, _ = ax.pie(outer_sizes, radius=1.0, colors=outer_colors, startangle=90, counterclock=False,
                      wedgeprops={"width": 0.45, **edge})
    for wedge, entry, size in zip(inner, verbs, inner_sizes, strict=True):
        if size / total > 0.008:
            _radial_label(ax, entry["verb"], wedge.theta1, wedge.theta2, 0.375, 8)
    for wedge, noun, size in zip(outer, outer_labels, outer_sizes, strict=True):
        if size / total > 0.004:
            _radial_label(ax, noun, wedge.theta1, wedge.theta2, 0.775, 6)
    save_figure(figure, path)


def length_histograms(lengths: dict[str, dict[str, list[int]]], path: str, unit: str = "words") -> None:
    """One panel per field (instruction, input, output): a histogram outline per data set.

    lengths: {data set label: {field: [length of each record, in `unit`]}}; inputs count only non-empty ones.
    A panel whose longest text has more than 100 units has a log x axis with log-spaced bins and says "(log scale)"
    in its label; the others are linear. The y axes are linear: examples per bin.
    """
    plt = _pyplot()
    fields = ("instruction", "input", "output")
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, field in zip(axes, fields, strict=True):
        values = [v for per_set in lengths.values() for v in per_set[field]]
        top = max(values, default=1)
        logarithmic = top > 100  # a few long outliers: log-spaced bins keep the bulk readable
        if logarithmic:
            bins = np.unique(np.geomspace(1, top + 1, 40).astype(int)) - 0.5
        else:
            bins = np.arange(0.5, top + 1.5, max(1, math.ceil(top / 40)))
        for label, per_set in lengths.items():
            data = per_set[field]
            if data:
                ax.hist(data, bins=bins, histtype="step", linewidth=1.5, label=f"{label} ({len(data)})")
        if logarithmic:
            ax.set_xscale("log")
        # The panels' scales can differ (a short field linear, a long one log): each label names its own.
        ax.set_xlabel(f"{unit} per {field}" + (" (non-empty)" if field == "input" else "")
                      + (" (log scale)" if logarithmic else ""))
        ax.set_ylabel("examples per bin")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def score_histogram(scores: list[float | None], path: str, title: str, min_score: float | None = None) -> None:
    """Examples per rating in half-point bins from 0 to 5; unrated examples are counted in the title; a dashed
    line marks --min_score when one is given."""
    plt = _pyplot()
    rated = [s for s in scores if s is not None]
    figure, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(rated, bins=np.arange(-0.25, 5.5, 0.5), edgecolor="white")
    ax.set_xticks(np.arange(0, 5.5, 0.5))
    if min_score is not None:
        ax.axvline(min_score - 0.25, color="black", linestyle="--", linewidth=1, label=f"kept: score >= {min_score:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    ax.set_title(f"{title}: {len(rated)} rated, {len(scores) - len(rated)} unrated", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
