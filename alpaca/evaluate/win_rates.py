"""Win rates from pairwise preferences, with honest error bars: the numbers and the picture behind judge.py (the LLM
judge) and human_eval.py (people). Pure functions over per-instruction lists; no I/O but the picture.

A preference is the judge's preference for the model's answer over the reference's on one instruction: 1 a win,
0 a loss, 0.5 a tie, in between for a soft (log-probability) verdict, None when unjudged.
"""

import math

import numpy as np

DIFFERENCES_KEY = "win_rate_differences"  # results.json's paired differences between its models
PROVENANCE_KEY = "provenance"  # results.json's record of what produced it (alpaca/evaluate/provenance.py)
NOT_MODELS = (DIFFERENCES_KEY, PROVENANCE_KEY)  # the keys of results.json that are not models
N_BOOTSTRAP = 2000  # resamples of the instructions for the win rate's interval
N_BOOTSTRAP_LC = 200  # for the length-controlled one: each resample refits the regression (a few ms)
# L2 strength of the length regression (sklearn's C; the intercept is not penalised). A judge that always picks the
# longer answer makes the data separable and the unregularised fit drift; C = 10 keeps the slope finite (~11) while
# leaving ordinary data almost untouched.
LC_REGULARISATION_C = 10.0


def percentile_ci(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_indices(n: int, seed: int, count: int) -> np.ndarray:
    """(count, n) indices drawn with replacement: resamples of the instructions."""
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def length_controlled_win_rate(preferences: np.ndarray, length_differences: np.ndarray) -> float:
    """The judge's preference for the model at zero length difference: scikit-learn's logistic regression of the
    preference on tanh(length difference / its standard deviation) plus an intercept (L2 on the slope only), with
    soft preferences as sample weights (a preference p is a win of weight p and a loss of weight 1 - p)."""
    p = np.asarray(preferences, dtype=float)
    if p.min() == p.max():  # nothing to explain: every fit returns this constant
        return float(p[0])
    from sklearn.linear_model import LogisticRegression

    d = np.asarray(length_differences, dtype=float)
    scale = d.std()
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    weights = np.concatenate([p, 1.0 - p])
    keep = weights > 0
    fit = LogisticRegression(C=LC_REGULARISATION_C, solver="newton-cholesky", max_iter=1000).fit(
        features[keep], labels[keep], sample_weight=weights[keep])
    return float(1.0 / (1.0 + math.exp(-fit.intercept_[0])))


def lc_extrapolates(length_differences: np.ndarray) -> bool:
    """Whether the length-controlled win rate is read off where no pair lies: every answer of the model is longer
    than the reference's, or every one shorter, so the fit's value at zero difference is an extrapolation that
    rests on its functional form alone (with 358 pairs all shorter, it moved a win rate of 0.243 to 0.120)."""
    d = np.asarray(length_differences, dtype=float)
    return bool(len(d)) and bool((d > 0).all() or (d < 0).all())


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def compute_results(preferences: list[float | None], model_lengths: list[int], reference_lengths: list[int],
                    categories: list[str], seed: int) -> dict:
    """The results.json fields of one model from per-instruction lists (all in the same order).

    preferences: the judge's preference for the model per instruction, 1 win, 0 loss, 0.5 tie (or in between),
    None unjudged. Lengths are in characters. win_rate = mean preference over judged instructions (wins + ties/2),
    win_rate_se its standard error, the 95% intervals percentile bootstraps over instructions seeded by `seed`.
    """
    judged = [i for i, p in enumerate(preferences) if p is not None]
    p = np.array([preferences[i] for i in judged], dtype=float)
    d = np.array([model_lengths[i] - reference_lengths[i] for i in judged], dtype=float)
    n = len(p)
    result: dict = {"win_rate": None, "win_rate_se": None, "win_rate_ci95": None, "lc_win_rate": None,
                    "lc_win_rate_ci95": None}
    if n:
        samples = bootstrap_indices(n, seed, N_BOOTSTRAP)
        result.update(
            win_rate=rounded(p.mean()), win_rate_se=rounded(p.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            win_rate_ci95=[rounded(v) for v in percentile_ci(p[samples].mean(axis=1))],
            lc_win_rate=rounded(length_controlled_win_rate(p, d)),
            lc_win_rate_ci95=[rounded(v) for v in percentile_ci(np.array(
                [length_controlled_win_rate(p[s], d[s]) for s in samples[:N_BOOTSTRAP_LC]]))],
            lc_extrapolates=lc_extrapolates(d))
    per_category = {}
    for category in sorted(set(categories)):
        values = [preferences[i] for i in judged if categories[i] == category]
        per_category[category] = {"win_rate": rounded(np.mean(values)) if values else None, "n": len(values)}
    result.update(
        n_total=len(preferences), n_wins=int((p > 0.5).sum()), n_losses=int((p < 0.5).sum()),
        n_ties=int((p == 0.5).sum()), n_unjudged=len(preferences) - n,
        avg_length={"model": rounded(np.mean(model_lengths), 1) if model_lengths else None,
                    "reference": rounded(np.mean(reference_lengths), 1) if reference_lengths else None},
        per_category=per_category)
    return result


def paired_difference_ci(preferences_a: list[float | None], preferences_b: list[float | None], seed: int) -> dict:
    """Win rate of model a minus that of model b on the instructions both have judged (same order in both lists),
    with a paired bootstrap 95% interval over those instructions: {"difference", "ci95", "n"}."""
    both = [i for i, (a, b) in enumerate(zip(preferences_a, preferences_b, strict=True))
            if a is not None and b is not None]
    if not both:
        return {"difference": None, "ci95": None, "n": 0}
    diff = np.array([preferences_a[i] - preferences_b[i] for i in both], dtype=float)
    samples = bootstrap_indices(len(diff), seed, N_BOOTSTRAP)
    return {"difference": rounded(diff.mean()), "ci95": [rounded(v) for v in percentile_ci(diff[samples].mean(1))],
            "n": len(diff)}


def model_names(results: dict) -> list[str]:
    """The models of a results dict, best length-controlled win rate first (unjudged models last)."""
    names = [name for name in results if name not in NOT_MODELS]
    return sorted(names, key=lambda name: -(results[name]["lc_win_rate"] if results[name]["lc_win_rate"] is not None
                                            else -1.0))


def interval(ci: list[float] | None) -> str:
    """A 95% interval as the tables show it: [0.412, 0.588], or "-" when there is none."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def number(value: float | None) -> str:
    """A rate as the tables show it: 0.500, or "-" when there is none."""
    return f"{value:.3f}" if value is not None else "-"


def format_table(results: dict) -> str:
    """The printed summary: one row per model, sorted by length-controlled win rate, then the paired differences."""
    names = model_names(results)
    width = max([5, *map(len, names)])
    lines = [f"{'model':<{width}}  win rate  95% CI            LC win rate  95% CI            wins/losses/ties  "
             f"unjudged  avg length (model/ref)"]
    for name in names:
        r = results[name]
        lines.append(f"{name:<{width}}  {number(r['win_rate']):>8}  {interval(r['win_rate_ci95']):<16}  "
                     f"{number(r['lc_win_rate']):>11}  {interval(r['lc_win_rate_ci95']):<16}  "
                     f"{r['n_wins']:>4}/{r['n_losses']}/{r['n_ties']:<8}  {r['n_unjudged']:>8}  "
                     f"{r['avg_length']['model']:.0f}/{r['avg_length']['reference']:.0f}")
    lines += lc_notes(results)
    for entry in results.get(DIFFERENCES_KEY, []):
        lines.append(f"win rate {entry['model_a']} - {entry['model_b']}: {number(entry['difference'])} "
                     f"(paired 95% CI {interval(entry['ci95'])}, {entry['n']} instructions)")
    return "\n".join(lines)


def lc_notes(results: dict) -> list[str]:
    """A note for each model (table order) whose LC win rate extrapolates (lc_extrapolates): read its raw one."""
    notes = []
    for name in model_names(results):
        if results[name].get("lc_extrapolates"):
            lengths = results[name]["avg_length"]
            side = "longer" if lengths["model"] > lengths["reference"] else "shorter"
            notes.append(f"note: {name}'s answers are all {side} than the reference's: its LC win rate extrapolates "
                         "to an equal length no pair has, and rests on the form of the fit; read the raw win rate.")
    return notes


def model_colours(results: dict) -> dict[str, str]:
    """{model: its colour}, in the table's order (model_names): one colour per model in every panel of the figure."""
    return {name: f"C{k % 10}" for k, name in enumerate(model_names(results))}


def plot_win_rates(results: dict, path: str, judged_by: str = "the judge") -> None:
    """win_rates.png: each model's win rate and length-controlled win rate with their 95% intervals (left), and
    its win rate per category (right; n = judged pairs). `judged_by` names who gave the verdicts in the x-axis
    label ("the judge", "the annotators"). Drawn with matplotlib's Agg canvas, no display needed."""
    win_rates_figure(results, judged_by).savefig(path, dpi=100)


def win_rates_figure(results: dict, judged_by: str = "the judge"):
    """The matplotlib Figure of plot_win_rates. A colour means one model in both panels; the left panel tells the
    two metrics apart by marker (filled circle: win rate, open square: length-controlled). Legends list the models
    in the table's order, best first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = model_names(results)
    colours = model_colours(results)
    categories = judged_categories(results)
    figure = Figure(figsize=(13, 2.5 + 0.4 * max(len(names) * 2, len(categories))))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    draw_overall(left, results, names, colours, judged_by)
    draw_per_category(right, results, names, colours, categories)
    figure.tight_layout()
    return figure


METRIC_MARKERS = [("win_rate", "win rate", {"marker": "o"}),
                  ("lc_win_rate", "length-controlled", {"marker": "s", "markerfacecolor": "white"})]


def draw_overall(axes, results: dict, names: list[str], colours: dict[str, str], judged_by: str) -> None:
    """The left panel: per model (best at the top), its win rate and LC win rate with their 95% intervals."""
    from matplotlib.lines import Line2D

    for row, name in enumerate(names):
        for offset, (field, _, style) in enumerate(METRIC_MARKERS):
            value, ci = results[name][field], results[name][f"{field}_ci95"]
            if value is None:
                continue
            axes.errorbar([value], [row - 0.15 + 0.3 * offset], xerr=[[value - ci[0]], [ci[1] - value]],
                          linestyle="none", capsize=4, color=colours[name], **style)
    axes.set_yticks(range(len(names)), names)
    axes.set_ylim(len(names) - 0.4, -0.6)  # inverted: rows top to bottom in the table's order, best first
    axes.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_xlim(0, 1)
    axes.set_xlabel(f"share of instructions where {judged_by} preferred the model")
    # The legend explains the markers only, in black: colour stays the model's (named on the y axis).
    axes.legend([Line2D([], [], color="black", linestyle="none", **style) for _, _, style in METRIC_MARKERS],
                [f"{label} (95% CI)" for _, label, _ in METRIC_MARKERS], loc="best", fontsize="small")
    axes.set_title("win rate against the reference")
    if all(results[name]["win_rate"] is None for name in names):  # empty axes read as a broken picture
        axes.text(0.5, 0.5, "no judged pairs: every pair is unjudged\n(see the run's log and annotations.jsonl)",
                  ha="center", va="center", transform=axes.transAxes)


def judged_categories(results: dict) -> list[str]:
    """The categories in which at least one model has a judged pair, sorted: a category nobody judged has no win
    rate to draw (a bar of 0 there would read as a loss on every pair)."""
    return sorted({category for name in model_names(results)
                   for category, entry in results[name]["per_category"].items() if entry["n"]})


def draw_per_category(axes, results: dict, names: list[str], colours: dict[str, str], categories: list[str]) -> None:
    """The right panel: per category, one bar per model with a judged pair there (best model at the top of each
    group), its value written beside it so that a win rate of 0 is seen too."""
    height = 0.8 / max(1, len(names))
    handles = {}
    for k, name in enumerate(names):
        for i, category in enumerate(categories):
            entry = results[name]["per_category"].get(category, {"n": 0})
            if not entry["n"]:
                continue  # no judged pair of this model here: nothing to draw, not a 0
            y = i - 0.4 + height * (k + 0.5)
            handles[name] = axes.barh([y], [entry["win_rate"]], height=height, color=colours[name])
            axes.text(entry["win_rate"] + 0.01, y, f"{entry['win_rate']:.2f}", va="center", fontsize=7)
    axes.set_yticks(range(len(categories)),
                    [f"{c} (n={max(results[name]['per_category'].get(c, {}).get('n', 0) for name in names)})"
                     for c in categories])
    if categories:
        axes.set_ylim(len(categories) - 0.5, -0.5)  # inverted, as the left panel: read top to bottom
    axes.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    axes.set_xlim(0, 1)
    axes.set_title("win rate per category")
    if handles:
        axes.legend([handles[name] for name in names if name in handles], [n for n in names if n in handles],
                    loc="best", fontsize="small")
