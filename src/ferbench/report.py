"""The study report: one self-contained, byte-deterministic HTML file.

Everything the reader needs travels inside the file (inline CSS, figures as base64 PNG), so
the report can be mailed, archived next to the DVC metrics, or opened offline. Nothing in it
depends on the clock or the machine, so re-running the report stage on unchanged results
yields the same bytes and DVC/Snakemake see no spurious change.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ferbench import compare, paths, published
from ferbench.config import LEAK_TWIN_SUFFIX
from ferbench.figures import RC, figure_png

NA = "n/a"

CSS = """
body { font-family: Georgia, 'Times New Roman', serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; border-bottom: 2px solid #222; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #999; }
h3 { font-size: 1.1em; margin-top: 1.6em; }
h4 { font-size: 1em; margin: 1em 0 .3em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em;
        border-top: 2px solid #222; border-bottom: 2px solid #222; }
thead th { border-bottom: 1px solid #222; vertical-align: bottom; }
th, td { padding: .25em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
.badge { display: inline-block; font: bold .72em sans-serif; padding: .1em .45em;
         border-radius: .3em; color: #fff; white-space: nowrap; }
.yes { background: #2e7d32; }
.no { background: #c62828; }
.small { font-size: .8em; color: #555; font-weight: normal; }
figure { display: inline-block; margin: .4em 1em .4em 0; vertical-align: top; }
figcaption { font-size: .8em; color: #555; }
img { max-width: 100%; }
.note { color: #777; font-style: italic; }
"""


class Html(str):
    """Markup that is already safe; every other string is escaped when rendered."""


def _text(value) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def _pct(value) -> str:
    return NA if value is None else f"{100 * value:.2f}"


def _mean_std(mean: float, std: float) -> str:
    return f"{_pct(mean)} ± {_pct(std)}"


def _interval(interval: dict | None) -> str:
    """A 95% interval as "[low, high]" in %, n/a where there is none (one fold, one face)."""
    if not interval or interval.get("low") is None:
        return NA
    return f"[{_pct(interval['low'])}, {_pct(interval['high'])}]"


def _p(value) -> str:
    return NA if value is None else f"{value:.3g}"


def _table(header: list, rows: list[list], caption: str = "") -> Html:
    """A booktabs-style table; cells are escaped unless wrapped in Html."""
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>\n"
                   for row in rows)
    cap = f"<caption>{_text(caption)}</caption>" if caption else ""
    return Html(f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>\n")


def _note(message: str) -> Html:
    return Html(f'<p class="note">{_text(message)}</p>\n')


def _badge(subject_independent: bool) -> Html:
    """Make a leaky (non subject-independent) protocol impossible to overlook."""
    if subject_independent:
        return Html('<span class="badge yes">subject-independent</span>')
    return Html('<span class="badge no">NOT subject-independent</span>')


def _img(png: bytes, alt: str, caption: str = "") -> Html:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_text(caption)}</figcaption>" if caption else ""
    return Html(f'<figure><img src="data:image/png;base64,{data}" alt="{_text(alt)}">'
                f"{cap}</figure>\n")


# -- inputs ------------------------------------------------------------------------------------

@dataclass
class Study:
    """One (dataset, protocol, model) summary with its per-fold files, its explain stage's
    figures and record, and its intervals and calibration from the compare stage (None
    where missing)."""

    summary: dict
    metrics: list[dict | None]
    histories: list[pd.DataFrame | None]
    attention_png: bytes | None = None
    tsne_png: bytes | None = None
    explained: dict | None = None
    statistics: dict | None = None

    @property
    def title(self) -> str:
        s = self.summary
        return f"{s['model']} on {s['dataset']} / {s['protocol']}"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def load_study(summary_path: Path) -> Study:
    """A summary plus the fold files it points to (paths relative to the summary's folder)."""
    summary = json.loads(summary_path.read_text())
    base = summary_path.parent
    figures = [paths.beside_summary(t, summary_path)
               for t in (paths.EXPLAIN_ATTENTION, paths.EXPLAIN_TSNE)]
    compared = _read_json(paths.beside_protocol(paths.STATISTICS, summary_path)) or {}
    return Study(summary,
                 [_read_json(base / f["metrics"]) for f in summary["folds"]],
                 [_read_csv(base / f["history"]) for f in summary["folds"]],
                 *[f.read_bytes() if f.is_file() else None for f in figures],
                 _read_json(paths.beside_summary(paths.EXPLAIN_INFO, summary_path)),
                 compared.get("models", {}).get(summary["model"]))


def load_benchmarks(paths: list[Path]) -> pd.DataFrame:
    """Per rule: jobs, total/mean wall seconds and peak RSS over its benchmark files.

    A file with several rows holds `repeat()` runs of one job, so it counts by its mean.
    """
    rows = []
    for path in paths:
        runs = pd.read_csv(path, sep="\t", na_values=["-"])
        rows.append({"rule": path.parent.name, "s": runs["s"].mean(),
                     "max_rss": runs["max_rss"].max()})
    if not rows:
        return pd.DataFrame(columns=["jobs", "total_s", "mean_s", "max_rss"])
    per_job = pd.DataFrame(rows)
    return per_job.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"),
                                       mean_s=("s", "mean"), max_rss=("max_rss", "max"))


# -- figures -----------------------------------------------------------------------------------

def confusion_figure(labels: list[str], confusion: list[list[int]]) -> bytes:
    """Row-normalised so classes of very different size read alike; counts stay visible."""
    counts = np.asarray(confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    percent = 100 * np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(labels)
    side = max(3.5, 0.55 * n + 1.2)
    fig = Figure(figsize=(side + 0.6, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of true class")
    for i, j in np.ndindex(n, n):
        ax.text(j, i, f"{percent[i, j]:.0f}%\n({int(counts[i, j])})", ha="center",
                va="center", fontsize=6, color="white" if percent[i, j] > 50 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return figure_png(fig)


def per_class_figure(per_class: pd.DataFrame) -> bytes:
    """Grouped precision/recall/F1 bars: which expressions the model confuses."""
    fig = Figure(figsize=(max(4.0, 0.6 * len(per_class) + 1.5), 3.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(per_class))
    width = 0.27
    for k, column in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * width, 100 * per_class[column], width, label=column)
    ax.set_xticks(x, per_class.index, rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("% (mean over folds)")
    ax.legend(ncols=3, loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)
    return figure_png(fig)


def curves_figure(histories: list[pd.DataFrame]) -> bytes:
    """Loss and accuracy per epoch: thin line per fold, thick mean over the folds still running.

    Early stopping makes folds differ in length, so the mean at an epoch uses only the folds
    that reached it.
    """
    fig = Figure(figsize=(7.0, 2.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    everything = pd.concat(histories, ignore_index=True)
    mean = everything.groupby("epoch").mean(numeric_only=True)
    for ax, metric, scale in ((ax_loss, "loss", 1), (ax_acc, "acc", 100)):
        for split, color in (("train", "C0"), ("val", "C1")):
            column = f"{split}_{metric}"
            for history in histories:
                ax.plot(history["epoch"], scale * history[column], color=color, lw=0.6,
                        alpha=0.45)
            ax.plot(mean.index, scale * mean[column], color=color, lw=1.8, label=f"{split} (mean)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("loss" if metric == "loss" else "accuracy (%)")
        ax.legend(frameon=False)
    return figure_png(fig)


def selection_figure(histories: list[pd.DataFrame]) -> bytes:
    """Train and selection accuracy against the readout's C, one line per fold: the
    selection is the validation split's, or pooled with the inner subject folds'."""
    fig = Figure(figsize=(4.0, 2.8), layout="constrained")
    ax = fig.subplots()
    selected = "pooled_acc" if "pooled_acc" in histories[0] else "val_acc"
    for history in histories:
        for column, color in (("train_acc", "C0"), (selected, "C1")):
            ax.plot(history["C"], 100 * history[column], color=color, lw=0.8, alpha=0.6)
        chosen = history[history["chosen"].astype(bool)]
        ax.plot(chosen["C"], 100 * chosen[selected], "o", color="C1", ms=4)
    ax.plot([], [], color="C0", label="train")
    ax.plot([], [], color="C1", label=("val + subject folds" if selected == "pooled_acc"
                                       else "val") + " (dot: chosen)")
    ax.set_xscale("log")
    ax.set_xlabel("C")
    ax.set_title("accuracy (%)")
    ax.legend(frameon=False)
    return figure_png(fig)


def runtime_figure(runtime: pd.DataFrame) -> bytes:
    """Where the wall-clock time of the study went, largest stage on top."""
    ordered = runtime.sort_values("total_s")
    fig = Figure(figsize=(5.0, max(1.6, 0.3 * len(ordered) + 0.8)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(ordered.index, ordered["total_s"], color="C2")
    ax.set_xlabel("total wall seconds")
    return figure_png(fig)


def reliability_figure(calibration: dict) -> bytes:
    """Accuracy per confidence bin against the diagonal of perfect calibration; the bar
    widths are the bins, the gaps to the diagonal what the ECE averages."""
    fig = Figure(figsize=(3.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    bins = calibration["bins"]
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins],
           [b["high"] - b["low"] for b in bins], align="edge", color="C0", edgecolor="white",
           label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["confidence"] for b in bins], "o", ms=3,
            color="C3", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="#555", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {100 * calibration['ece']:.2f}%")
    ax.legend(frameon=False, loc="upper left")
    return figure_png(fig)


def critical_difference_figure(ranking: dict) -> bytes:
    """Demsar's (2006) critical difference diagram: average ranks on an axis (1 = best),
    the CD as a bar, and thick lines joining models not significantly different."""
    models, ranks, k = ranking["models"], ranking["average_ranks"], len(ranking["models"])
    fig = Figure(figsize=(6.0, 1.2 + 0.25 * k), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(k + 0.3, 0.7)
    ax.set_ylim(-0.5 - 0.35 * k, 1.0)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black")
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.1, color="black")
        ax.text(r, 0.18, str(r), ha="center", va="bottom")
    ax.hlines(0.75, 1, 1 + ranking["cd"], color="black", lw=1.5)
    ax.text(1 + ranking["cd"] / 2, 0.82, f"CD {ranking['cd']:.2f}", ha="center", va="bottom")
    for place, i in enumerate(np.argsort(ranks, kind="stable")):
        y = -0.35 * (place + 1)
        ax.plot([ranks[i], ranks[i]], [0, y], color="C0", lw=0.8)
        ax.text(ranks[i], y - 0.02, f"{models[i]} ({ranks[i]:.2f})", ha="center", va="top")
    for level, clique in enumerate(ranking["cliques"]):
        ax.hlines(-0.1 - 0.12 * level, min(ranks[i] for i in clique) - 0.03,
                  max(ranks[i] for i in clique) + 0.03, color="C3", lw=3)
    return figure_png(fig)


# -- sections ----------------------------------------------------------------------------------

def header_section(title: str, studies: list[Study]) -> Html:
    datasets = sorted({s.summary["dataset"] for s in studies})
    return Html(f"<h1>{_text(title)}</h1>\n<p>{len(studies)} studies on "
                f"{len(datasets)} dataset(s): {_text(', '.join(datasets)) or NA}. "
                "Scores are in %, mean ± sample std over cross-validation folds.</p>\n")


def _column_header(summary: dict) -> Html:
    return Html(f"{_text(summary['dataset'])} / {_text(summary['protocol'])}<br>"
                f"{_badge(summary['subject_independent'])}<br>"
                f'<span class="small">{_text(summary["protocol_description"])}</span>')


def _best(values: dict, key: str) -> float:
    """Best displayed score of a column, compared as shown so printed ties both get bold."""
    return max(round(100 * s[key], 2) for s in values.values())


#: The classical anchor every deep model must beat on the same folds.
BASELINE = "hog_svm"


def _score_cell(summary: dict, best_acc: float, best_f1: float,
                statistics: dict | None = None, baseline: dict | None = None) -> Html:
    k = len(summary["folds"])
    acc = _mean_std(summary["accuracy_mean"], summary["accuracy_std"])
    f1 = _mean_std(summary["macro_f1_mean"], summary["macro_f1_std"])
    if round(100 * summary["accuracy_mean"], 2) == best_acc:
        acc = f"<b>{acc}</b>"
    if round(100 * summary["macro_f1_mean"], 2) == best_f1:
        f1 = f"<b>{f1}</b>"
    if statistics:
        acc += f' <span class="small">{_interval(statistics["accuracy"])}</span>'
        f1 += f' <span class="small">{_interval(statistics["macro_f1"])}</span>'
    flag = ""
    if baseline is not None and summary is not baseline and not clears(summary, baseline):
        flag = (f'<br><span class="badge no">does not clear {BASELINE}</span>')
    return Html(f"acc {acc} ({k} folds)<br>macro-F1 {f1}{flag}")


def clears(summary: dict, baseline: dict) -> bool:
    """Whether a model's accuracy interval (mean ± std over folds) lies wholly above the
    baseline's: a deep model that does not is a bug to find, not a result to report."""
    return (summary["accuracy_mean"] - summary["accuracy_std"]
            > baseline["accuracy_mean"] + baseline["accuracy_std"])


def accuracy_section(studies: list[Study]) -> Html:
    """The paper's main table: methods x (dataset, protocol), best per column in bold."""
    out = "<h2>1. Accuracy</h2>\n"
    if not studies:
        return Html(out + _note("No study summaries were given."))
    columns: dict[tuple, dict[str, dict]] = {}
    for study in studies:
        s = study.summary
        columns.setdefault((s["dataset"], s["protocol"]), {})[s["model"]] = s
    models = list(dict.fromkeys(s.summary["model"] for s in studies))
    intervals = {(s.summary["dataset"], s.summary["protocol"], s.summary["model"]): s.statistics
                 for s in studies}
    best = {key: (_best(cells, "accuracy_mean"), _best(cells, "macro_f1_mean"))
            for key, cells in columns.items()}
    header = ["method"] + [_column_header(next(iter(cells.values())))
                           for cells in columns.values()]
    rows = [[_method_cell(model, studies)]
            + [_score_cell(cells[model], *best[key], intervals[(*key, model)],
                           cells.get(BASELINE)) if model in cells else "—"
               for key, cells in columns.items()]
            for model in models]
    caption = ("Test accuracy and macro-F1 (%), mean ± std, [95% interval]: the corrected "
               "resampled t over folds (Nadeau & Bengio 2003), or a bootstrap over test faces "
               "for one fold")
    if any(BASELINE in cells for cells in columns.values()):
        caption += (f"; a model is flagged when its mean − std does not clear {BASELINE}'s "
                    "mean + std on the same folds")
    return Html(out + _table(header, rows, caption))


def _method_cell(model: str, studies: list[Study]) -> Html:
    """A model's name; a model evaluated as it was trained elsewhere (no epoch on the
    study's faces) says where, so it is read as a peer, not as a result of this protocol;
    an ensemble says whose vote it averages."""
    from ferbench.models import get

    summary = next(s.summary for s in studies if s.summary["model"] == model)
    if summary.get("recipe", {}).get("epochs", 1) != 0:
        return Html(_text(model))
    start = summary.get("start") or "elsewhere"
    what = start if get(model).combines else f"evaluated only, trained on {start}"
    return Html(f'{_text(model)}<br><span class="small">{_text(what)}</span>')


#: Recipe keys the workflow fills in (weights a run starts from, an ensemble's members), not
#: hyperparameters a study chose.
FILLED_IN = ("init_from", "member_recipes", "members_from")


def recipe_section(studies: list[Study]) -> Html:
    """What each model was trained with: the recipe's name, what its weights started from,
    and every hyperparameter that differs from the paper's."""
    from ferbench.models import get

    out = "<h2>4. Recipes</h2>\n"
    rows = []
    for study in studies:
        recipe = study.summary.get("recipe")
        if recipe is None:
            continue
        paper = get(study.summary["model"]).defaults
        changed = ", ".join(f"{k}={v}" for k, v in sorted(recipe.items())
                            if k in paper and paper[k] != v and k not in FILLED_IN)
        rows.append([study.title, recipe.get("recipe", "paper"),
                     study.summary.get("start") or start_of(recipe), changed or "the paper's"])
    if not rows:
        return Html(out + _note("No study recorded its recipe."))
    return Html(out + _table(["study", "recipe", "start", "changed from the paper defaults"],
                             rows, "The effective recipe of every study (all its folds)"))


def start_of(recipe: dict) -> str:
    """Where a model's weights started, from its recipe (summaries before `start` was kept)."""
    for key in ("init_from", "pretrained"):
        if recipe.get(key):
            return f"weights from {Path(recipe[key]).name}"
    return "random initialisation"


def config_section(config: dict | None) -> Html:
    """The effective study config (the file plus the schema's defaults), as Snakemake ran it."""
    if config is None:
        return Html("")
    import yaml

    text = yaml.safe_dump(config, sort_keys=False, width=100)
    return Html("<h2>8. Configuration</h2>\n<details><summary>The effective study config: "
                "the study file with the schema's defaults filled in</summary>\n"
                f"<pre>{_text(text)}</pre>\n</details>\n")


def _difference(pair: dict, key: str) -> list:
    d = pair[key]
    return [f"{100 * d['mean']:+.2f}", _interval(d), _p(d["p"]), _p(d["wilcoxon_p"])]


def comparison_section(statistics: list[dict], studies: list[Study]) -> Html:
    """Is model A really better than B on the same folds? Paired differences with their
    intervals and tests per (dataset, protocol), then Friedman + Nemenyi across data sets."""
    out = ""
    for stats in statistics:
        if not stats["pairs"]:
            continue
        rows = [[f"{p['a']} − {p['b']}", p["folds"], *_difference(p, "accuracy"),
                 *_difference(p, "macro_f1"),
                 f"{p['mcnemar']['a_only']} / {p['mcnemar']['b_only']}",
                 _p(p["mcnemar"]["p"])] for p in stats["pairs"]]
        single = next(iter(stats["models"].values()))["folds"] == 1
        method = ("percentile bootstrap over the test faces, paired" if single else
                  "corrected resampled t-test over folds (Nadeau & Bengio 2003, variance × "
                  f"(1/k + n_test/n_train), n_test/n_train = {stats['test_train_ratio']:.3f})")
        out += _table(["A − B", "folds", "Δ accuracy", "95% interval", "p", "Wilcoxon p",
                       "Δ macro-F1", "95% interval", "p", "Wilcoxon p",
                       "faces only A / only B right", "McNemar p"], rows,
                      f"{stats['dataset']} / {stats['protocol']}: differences in points, "
                      f"{method}; Wilcoxon signed-rank over folds; McNemar's exact test on "
                      "the pooled test faces (it treats faces as independent and ignores how "
                      "much the training sets vary, so it is far more confident than the "
                      "fold-level tests)")
    ranking = ranking_across_datasets(studies)
    if ranking:
        out += (f"<p>Across {ranking['datasets']} (dataset, protocol) columns, ranked by mean "
                f"accuracy: Friedman χ²<sub>F</sub> = {ranking['chi2']:.3f} "
                f"(p = {_p(ranking['chi2_p'])}), Iman–Davenport F<sub>F</sub> = "
                f"{ranking['f']:.3f} (p = {_p(ranking['f_p'])}); Nemenyi critical difference "
                f"{ranking['cd']:.3f} at α = {ranking['alpha']} (Demsar 2006).</p>\n")
        out += _img(critical_difference_figure(ranking), "critical difference diagram",
                    "Average ranks (1 = best); models joined by a red bar do not differ "
                    "significantly (Nemenyi).")
    return Html("<h3>Paired comparisons</h3>\n" + out) if out else Html("")


def leak_twin_section(studies: list[Study]) -> Html:
    """Honest protocol beside its image-level twin (`leak_twin: true`): how much a leaky
    split inflates the same model on the same data, with the difference's interval."""
    by_key = {(s.summary["dataset"], s.summary["protocol"], s.summary["model"]): s
              for s in studies}
    rows = []
    for (dataset, protocol, model), leaky in by_key.items():
        honest = by_key.get((dataset, protocol.removesuffix(LEAK_TWIN_SUFFIX), model))
        if not protocol.endswith(LEAK_TWIN_SUFFIX) or honest is None:
            continue
        ratios = [(s.statistics or {}).get("test_train_ratio", 0.0) for s in (honest, leaky)]
        difference = compare.unpaired_difference(
            [f["accuracy"] for f in honest.summary["folds"]], ratios[0],
            [f["accuracy"] for f in leaky.summary["folds"]], ratios[1])
        cells = [[_mean_std(s.summary["accuracy_mean"], s.summary["accuracy_std"]),
                  _interval((s.statistics or {}).get("accuracy"))] for s in (honest, leaky)]
        rows.append([model, f"{dataset} / {honest.summary['protocol']}", *cells[0], *cells[1],
                     f"{100 * difference['mean']:+.2f}", _interval(difference),
                     _p(difference["p"])])
    if not rows:
        return Html("")
    return Html("<h3>Leak inflation: the honest protocol beside its image-level twin</h3>\n"
                + _table(["model", "dataset / protocol", "honest accuracy", "95% interval",
                          "image-level twin", "95% interval", "honest − leaky",
                          "95% interval", "p"], rows,
                         "Accuracy (%); the two runs use different folds, so the difference's "
                         "interval adds both corrected variances (Welch degrees of freedom)"))


def ranking_across_datasets(studies: list[Study]) -> dict | None:
    """Friedman + Nemenyi over the models every (dataset, protocol) column shares, where
    there are two or more datasets and two or more such models; None otherwise."""
    columns: dict[tuple, dict[str, float]] = {}
    for study in studies:
        s = study.summary
        columns.setdefault((s["dataset"], s["protocol"]), {})[s["model"]] = s["accuracy_mean"]
    shared = [m for m in dict.fromkeys(s.summary["model"] for s in studies)
              if all(m in cells for cells in columns.values())]
    if len({dataset for dataset, _ in columns}) < 2 or len(shared) < 2:
        return None
    scores = [[cells[m] for m in shared] for cells in columns.values()]
    return compare.rank_models(scores, shared)


#: The papers' ablations: which registered models differ by one component, and how.
ABLATIONS = {
    "e2-capsnet-au-attention.txt": ("E2-Capsnet Table 1: what each enhancement adds", {
        "vgg16": "VGG16 trunk + FC classifier",
        "capsnet": "CapsNet on the raw face (no VGG trunk)",
        "avggnet": "VGG16 + AU attention + FC classifier",
        "rccnet": "VGG16 + capsules (no attention)",
        "e2capsnet": "VGG16 + AU attention + capsules",
        "decapsnet": "VGG19 + AU attention + capsules + DCGAN faces (DE-Capsnet)",
    }),
    "dam-cnn-serd-mpvs.txt": ("DAM-CNN's steps: what MPVS-Net adds to VGG-SERD", {
        "vgg_serd": "step 1: VGG + SERD attention + FC classifier",
        "damcnn": "step 2: frozen VGG-SERD + MPVS-Net",
    }),
}


def ablation_section(studies: list[Study], entries: list[published.Published]) -> Html:
    """Each paper's ablation as one table per (dataset, protocol), ours beside the paper's
    own numbers for the same models (on the paper's dataset, named)."""
    out = ""
    for paper, (title, components) in ABLATIONS.items():
        columns: dict[tuple, dict[str, dict]] = {}
        for study in studies:
            s = study.summary
            if s["model"] in components:
                columns.setdefault((s["dataset"], s["protocol"]), {})[s["model"]] = study
        for (dataset, protocol), cells in columns.items():
            if len(cells) < 2:
                continue
            rows = []
            for model, parts in components.items():
                if model not in cells:
                    continue
                theirs = [f"{e.accuracy:.2f} ({e.datasets}, {e.where})" for e in entries
                          if e.paper == paper and e.model == model]
                s = cells[model].summary
                rows.append([model, parts, _mean_std(s["accuracy_mean"], s["accuracy_std"]),
                             _interval((cells[model].statistics or {}).get("accuracy")),
                             _mean_std(s["macro_f1_mean"], s["macro_f1_std"]),
                             "<br>".join(theirs) or "—"])
            out += _table(["model", "components", "ours: accuracy", "95% interval",
                           "ours: macro-F1", "paper (%)"], rows,
                          f"{title} — ours on {dataset} / {protocol}")
    return Html("<h3>Ablations</h3>\n" + out) if out else Html("")


def _folds_table(study: Study) -> Html:
    wilson = {f["fold"]: f for f in (study.statistics or {}).get("per_fold", [])}
    rows = [[f["fold"], f["n_train"], f["n_val"], f["n_test"], _pct(f["accuracy"]),
             _interval(wilson.get(f["fold"])), _pct(f["macro_f1"]),
             NA if m is None else m["best_epoch"]]
            for f, m in zip(study.summary["folds"], study.metrics)]
    return _table(["fold", "n_train", "n_val", "n_test", "accuracy", "95% interval (Wilson)",
                   "macro-F1", "best epoch"],
                  rows, "Per fold (%)")


def per_class_means(study: Study) -> pd.DataFrame:
    """Precision/recall/F1 per class averaged over the folds whose metrics exist; support summed."""
    frames = [pd.DataFrame(m["per_class"]).T for m in study.metrics if m is not None]
    if not frames:
        return pd.DataFrame()
    stacked = pd.concat(frames)
    means = stacked.groupby(level=0, sort=False)[["precision", "recall", "f1"]].mean()
    means["support"] = stacked.groupby(level=0, sort=False)["support"].sum().astype(int)
    return means.reindex(study.summary["labels"])


def _per_class_part(study: Study) -> Html:
    per_class = per_class_means(study)
    if per_class.empty:
        return _note("No per-fold metrics found, so no per-class scores.")
    rows = [[r.Index, _pct(r.precision), _pct(r.recall), _pct(r.f1), r.support]
            for r in per_class.itertuples()]
    table = _table(["class", "precision", "recall", "F1", "support"], rows,
                   "Per class (%, mean over folds; support summed)")
    return Html(table + _img(per_class_figure(per_class), f"per-class scores, {study.title}"))


def _curves_part(study: Study) -> Html:
    histories = [h for h in study.histories if h is not None and not h.empty]
    if not histories:
        return _note("No training histories found.")
    if "C" in histories[0]:  # a closed-form fit: one row per candidate C, not per epoch
        return _img(selection_figure(histories), f"model selection, {study.title}",
                    "Accuracy per C: thin lines per fold, dots the C each fold chose on its "
                    "validation split (pooled with its subject folds where the recipe sets "
                    "subject_folds).")
    shares = [c for c in histories[0] if c.startswith("share_")]
    if shares:  # an ensemble: one row per candidate vote
        return _vote_shares_table(study, shares)
    return _img(curves_figure(histories), f"training curves, {study.title}",
                "Training curves: thin lines per fold, thick lines the mean.")


def _vote_shares_table(study: Study, shares: list[str]) -> Html:
    """Each fold's vote shares (the history's `shares` columns), and its validation accuracy
    with them and with equal ones."""
    rows = []
    for fold, history in enumerate(study.histories):
        if history is None or history.empty:
            continue
        chosen = history[history["chosen"].astype(bool)].iloc[0]
        rows.append([fold, *(f"{chosen[c]:.2f}" for c in shares), _pct(chosen["val_acc"]),
                     _pct(history["val_acc"].iloc[0])])
    return _table(["fold", *(c.removeprefix("share_") for c in shares), "val acc",
                   "val acc, equal shares"], rows,
                  "The vote's share of each member per fold (chosen on the validation split "
                  "where the recipe says vote: validation)")


def _explain_part(study: Study) -> Html:
    """The explain stage's heatmaps over test faces and t-SNE of the representations."""
    if study.attention_png is None and study.tsne_png is None:
        return _note("No attention or t-SNE figures found (the explain stage's outputs).")
    fold = (study.explained or {}).get("fold", paths.EXPLAINED_FOLD)
    out = ""
    if study.attention_png is not None:
        out += _img(study.attention_png, f"attention maps, {study.title}",
                    f"Fold {fold} test faces (true class, prediction) and the model's maps, "
                    "resized bilinearly; heatmaps scaled by their maximum, signed ones "
                    "(SERD's tanh mask) symmetrically with 0 at the middle colour.")
    if study.tsne_png is not None:
        out += _img(study.tsne_png, f"t-SNE, {study.title}",
                    f"t-SNE of fold {fold} test faces: raw pixels, then the model's "
                    "representations (DAM-CNN Fig. 6 style), coloured by true class.")
    return Html(out)


def study_section(study: Study, number: int) -> Html:
    """Everything about one (dataset, protocol, model): folds, errors, classes, training."""
    s = study.summary
    run = s.get("mlflow_run_id")
    run_line = f' <span class="small">MLflow run {_text(run)}</span>' if run else ""
    confusion = _img(confusion_figure(s["labels"], s["confusion"]),
                     f"confusion matrix, {study.title}",
                     "Confusion matrix summed over folds (row-normalised %, counts).")
    return Html(f'<h3 id="study-{number}">3.{number} {_text(study.title)} '
                f"{_badge(s['subject_independent'])}{run_line}</h3>\n"
                f"<p>{_text(s['protocol_description'])}</p>\n"
                + _folds_table(study) + confusion + "<h4>Per class</h4>\n"
                + _per_class_part(study) + "<h4>Calibration</h4>\n" + _calibration_part(study)
                + "<h4>Training</h4>\n" + _curves_part(study)
                + "<h4>Attention and representations</h4>\n" + _explain_part(study))


def _calibration_part(study: Study) -> Html:
    """Expected calibration error and reliability diagram of the pooled test faces."""
    calibration = (study.statistics or {}).get("calibration")
    if not calibration or not calibration["bins"]:
        return _note("No calibration found (the compare stage's statistics.json).")
    return _img(reliability_figure(calibration), f"reliability diagram, {study.title}",
                f"Reliability of the top-class probability over {calibration['faces']} pooled "
                f"test faces, {len(calibration['bins'])} non-empty of "
                f"{compare.CALIBRATION_BINS} equal-width bins; expected calibration error "
                f"{100 * calibration['ece']:.2f}% (Guo et al. 2017).")


def studies_section(studies: list[Study]) -> Html:
    parts = [study_section(study, i) for i, study in enumerate(studies, start=1)]
    return Html("<h2>3. Studies</h2>\n" + ("".join(parts) or _note("No studies.")))


def _paper_rows(study: Study, entries: list[published.Published]) -> list[list]:
    """One row per published number for the study's model and datasets, or one saying so."""
    s = study.summary
    interval = (study.statistics or {}).get("accuracy")
    ours = [_mean_std(s["accuracy_mean"], s["accuracy_std"]), _interval(interval)]
    context = (study.explained or {}).get("context")
    if not context:
        return [[study.title, *ours, "—", "—", "—", "—",
                 "study context unknown (no explain-stage record), so nothing to match"]]
    matches = published.for_study(entries, context)
    if not matches:
        reported = sorted({e.datasets for e in entries if e.model == s["model"]})
        elsewhere = (f"; the papers report {s['model']} on {', '.join(reported)} (table below)"
                     if reported else "")
        return [[study.title, *ours, "—", "—", "—", "—",
                 f"no published number for {s['model']} on {context['adapter']}{elsewhere}"]]
    return [[study.title, *ours, f"{e.accuracy:.2f}", _inside(e.accuracy, interval),
             f"{e.method} ({e.paper})", e.where,
             "; ".join(published.differences(e, context)) or "same protocol"]
            for e in matches]


def _inside(accuracy: float, interval: dict | None) -> str:
    """Whether a published accuracy (%) lies inside our 95% interval."""
    verdict = compare.inside(accuracy / 100, interval) if interval else None
    return NA if verdict is None else ("yes" if verdict else "no")


def _published_table(entries: list[published.Published], caption: str) -> Html:
    return _table(["paper", "method", "model", "dataset", "classes", "protocol", "accuracy (%)",
                   "where"],
                  [[e.paper, e.method, e.model,
                    e.datasets,
                    e.class_set or "not stated",
                    f"{published.split_words(e.kind, e.folds)}: {e.protocol}",
                    f"{e.accuracy:.2f}", e.where + (f". {e.note}" if e.note else "")]
                   for e in entries], caption)


def published_section(studies: list[Study], entries: list[published.Published]) -> Html:
    """The papers' numbers beside ours, each with where the protocols differ, then the
    transcribed table: the numbers on the study's own datasets first, the rest folded away
    (`<details>`), so the report opens on what the user ran."""
    out = "<h2>2. The papers' numbers beside ours</h2>\n"
    rows = [row for study in studies for row in _paper_rows(study, entries)]
    if rows:
        out += _table(["study", "ours (%)", "our 95% interval", "paper (%)",
                       "paper inside our interval", "method (paper)", "where",
                       "protocol differences"], rows,
                      "Matched on model, dataset adapter (trained and tested on)")
    contexts = [(study.explained or {}).get("context") or {} for study in studies]
    ours = {c[key] for c in contexts for key in ("adapter", "test_adapter") if c.get(key)}
    own = [e for e in entries if {e.dataset, e.tested_on} & ours]
    rest = [e for e in entries if e not in own]
    named = ", ".join(sorted(ours)) or "this study's datasets"
    out += (_published_table(own, f"Published accuracies on {named}, transcribed from the "
                                  "source papers") if own
            else _note(f"The papers publish no number on {named}."))
    if rest:
        out += (f"<details><summary>Published accuracies on other datasets ({len(rest)})"
                f"</summary>\n{_published_table(rest, 'Transcribed from the source papers')}"
                "</details>\n")
    return Html(out)


def _iou_cells(iou: dict | None) -> list:
    if iou is None:
        return ["no ground truth", "", "", ""]
    return [f"{iou['mean']:.3f}", f"{iou['median']:.3f}", _pct(iou["hit_rate_05"]), iou["n"]]


def detection_section(detections: list[Path], samples: list[Path]) -> Html:
    """What the face detector did to each dataset, and a look at the faces it produced
    (face sheets, and landmark sheets with the 68 points drawn on the face crops)."""
    out = "<h2>5. Face detection</h2>\n"
    stats = [d for d in (_read_json(p) for p in detections) if d is not None]
    if stats:
        rows = [[d["dataset"], d["detector"], d["images"], d["detected"], d["missed"],
                 d["corrupt"], d["fallback_full_image"], d["dropped"], _pct(d["detection_rate"]),
                 *_iou_cells(d["iou"]), d.get("aligned", NA), f"{d['seconds']:.1f}"]
                for d in stats]
        out += _table(["dataset", "detector", "images", "detected", "missed", "corrupt",
                       "full-image fallback", "dropped", "detection rate (%)", "IoU mean",
                       "IoU median", "IoU ≥ 0.5 (%)", "IoU n", "eye-line aligned", "seconds"],
                      rows)
    else:
        out += _note("No detection statistics were given.")
    for path in samples:
        if path.is_file():
            out += _img(path.read_bytes(), "sample faces", "/".join(path.parts[-3:]))
    return Html(out)


def runtime_section(benchmarks: list[Path]) -> Html:
    """Cost of each pipeline stage, from Snakemake's benchmark files."""
    out = "<h2>6. Runtime</h2>\n"
    runtime = load_benchmarks(benchmarks)
    if runtime.empty:
        return Html(out + _note("No benchmark files were given."))
    rows = [[r.Index, r.jobs, f"{r.total_s:.2f}", f"{r.mean_s:.2f}",
             NA if pd.isna(r.max_rss) else f"{r.max_rss:.1f}"]
            for r in runtime.itertuples()]
    table = _table(["rule", "jobs", "total wall s", "mean wall s", "max RSS (MB)"], rows,
                   "Runtime per Snakemake rule")
    return Html(out + table + _img(runtime_figure(runtime), "runtime per rule"))


def audit_section(audits: list[tuple[dict, bytes | None]]) -> Html:
    """The near-duplicate leak audit per (dataset, protocol): how many test faces have a
    (nearly) identical training face, per fold, and the closest pairs side by side."""
    out = "<h2>7. Near-duplicate leak audit</h2>\n"
    if not audits:
        return Html(out + _note("No leak audit was given."))
    out += _text_paragraph(
        "Every aligned face crop is hashed (difference hash, dHash); per fold, each test "
        "face's nearest training face by Hamming distance is found. A test face within the "
        "protocol's distance of a training face is (nearly) the same picture on both sides of "
        "the split, whoever it shows: keeping subjects apart does not catch it. "
        "`dedupe: drop` sets such faces aside before any model is tested.")
    for found, png in audits:
        rows = [[f["fold"], f["test_faces"], f["near_duplicates"], _pct(f["rate"]),
                 f["other_label"], f["dropped"]] for f in found["folds"]]
        rows.append([Html("<b>all</b>"), found["test_faces"], found["near_duplicates"],
                     _pct(found["rate"]), found["other_label"], found["dropped"]])
        out += _table(["fold", "test faces", "near-duplicates", "rate (%)", "with another label",
                       "dropped"], rows,
                      f"{found['dataset']} / {found['protocol']}: test faces within "
                      f"{found['max_distance']} bits of a training face ({found['hash']})")
        if found["closest"]:
            closest = [[c["fold"], c["uid"], c["label"], c["train_uid"], c["train_label"],
                        c["distance"], NA if c["pixel_difference"] is None
                        else f"{c['pixel_difference']:.1f}"] for c in found["closest"]]
            out += _table(["fold", "test face", "label", "nearest training face", "label",
                           "Hamming bits", "mean |pixel difference|"], closest,
                          "The closest (test, training) pairs")
        if png:
            out += _img(png, f"closest pairs, {found['dataset']} / {found['protocol']}",
                        "The closest pairs side by side: test face, then its nearest "
                        "training face.")
    return Html(out)


def _text_paragraph(message: str) -> Html:
    return Html(f"<p>{_text(message)}</p>\n")


# -- entry point -------------------------------------------------------------------------------

def build_report(summaries: list[Path], detections: list[Path], benchmarks: list[Path],
                 out_html: Path, *, title: str = "ferbench report",
                 samples: list[Path] = (), config: dict | None = None) -> Path:
    """Write the report and return its path; same inputs always give the same bytes."""
    studies = [load_study(Path(p)) for p in summaries]
    protocols = list(dict.fromkeys(paths.beside_protocol(paths.STATISTICS, p).parent
                                   for p in summaries))
    statistics = [s for s in (_read_json(d / Path(paths.STATISTICS).name) for d in protocols)
                  if s]
    audits = [(found, _read_bytes(d / Path(paths.AUDIT_PAIRS).name)) for d, found in
              ((d, _read_json(d / Path(paths.AUDIT).name)) for d in protocols) if found]
    with matplotlib.rc_context(RC):
        entries = published.load()
        body = (header_section(title, studies) + accuracy_section(studies)
                + comparison_section(statistics, studies) + leak_twin_section(studies)
                + ablation_section(studies, entries) + published_section(studies, entries)
                + studies_section(studies) + recipe_section(studies)
                + detection_section([Path(p) for p in detections], [Path(p) for p in samples])
                + runtime_section(sorted(Path(p) for p in benchmarks))
                + audit_section(audits) + config_section(config))
    document = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f"<title>{_text(title)}</title>\n<style>{CSS}</style>\n</head>\n"
                f"<body>\n{body}</body>\n</html>\n")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(document, encoding="utf-8")
    return out_html
