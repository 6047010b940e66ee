"""The comparison report: every variant side by side, each figure read from the run's metrics files.
Also the compact summary DVC shows as metrics, and the report as one self-contained HTML page for MLflow."""

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import markdown as markdown_to_html
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vaelab import paths
from vaelab.data import N_CLASSES
from vaelab.paths import atomic_path

DIGITS = [str(d) for d in range(N_CLASSES)]


@dataclass(frozen=True)
class VariantResults:
    """What the train, evaluate and assess stages wrote for one variant."""

    name: str
    train: dict
    test: dict
    assess: dict
    curves: pd.DataFrame
    kl_per_dim: pd.DataFrame

    @classmethod
    def read(cls, name: str) -> "VariantResults":
        return cls(
            name,
            read_json(paths.train_metrics_file(name)),
            read_json(paths.test_metrics_file(name)),
            read_json(paths.assess_metrics_file(name)),
            pd.read_csv(paths.curves_file(name)),
            pd.read_csv(paths.kl_per_dim_file(name)),
        )

    @property
    def final_kl_weight(self) -> float:
        return float(self.curves["kl_weight"].iloc[-1])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def summary(results: list[VariantResults], judge: dict) -> dict:
    """The headline figures DVC lists as metrics, one figure per variant under each name: `dvc exp show`
    puts every variant's test ELBO and IWAE bound first (columns elbo.<variant>, iwae.<variant>).
    No timings: a figure that differs in every run would defeat `dvc exp show --only-changed`."""
    figures = {
        "elbo": lambda v: v.test["test"]["elbo"],
        "iwae": lambda v: v.assess["iwae"]["bound"],
        "binarized_bound": lambda v: v.assess["binarized"]["bound"],
        "active_units": lambda v: v.assess["active_units"],
    }
    metrics = {name: {v.name: figure(v) for v in results} for name, figure in figures.items()}
    return {**metrics, "judge_accuracy": judge["test_accuracy"]}


def html_page(markdown_text: str, folder: Path, title: str) -> str:
    """The Markdown report as one HTML page with its pictures inside it (as data: URIs), so that it
    shows whole wherever it is copied, MLflow's artifact viewer included. Image paths are relative to folder."""
    body = markdown_to_html.markdown(markdown_text, extensions=["tables"])

    def embed(match: re.Match) -> str:
        data = base64.b64encode((folder / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    # a wide table scrolls inside its own box instead of pushing the page past MLflow's artifact viewer
    style = ("body{font-family:sans-serif;font-size:14px;max-width:1400px;margin:auto;padding:1em} "
             "table{border-collapse:collapse;display:block;overflow-x:auto} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} "
             "img{vertical-align:top}")
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style></head><body>\n{body}\n</body></html>\n"


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)


def learning_curves(results: list[VariantResults], path: Path) -> None:
    """Mean train loss and test ELBO per epoch, every variant on the same axes."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, elbo_axes = figure.subplots(1, 2)
    for variant in results:
        loss_axes.plot(variant.curves["epoch"], variant.curves["train_loss"], marker=".", label=variant.name)
        elbo_axes.plot(variant.curves["epoch"], variant.curves["test_elbo"], marker=".", label=variant.name)
    loss_axes.set(xlabel="epoch", ylabel="nats per image", title="Mean train loss (KL weighted as in training)")
    elbo_axes.set(xlabel="epoch", ylabel="nats per image", title="Test ELBO")
    # the first epochs are far off the rest; the tail is where the variants differ
    final = [v.curves["test_elbo"].iloc[-1] for v in results]
    elbo_axes.set_ylim(min(final) - 15, max(final) + 5)
    loss_axes.set_ylim(min(v.curves["train_loss"].min() for v in results) - 5, -min(final) + 20)
    for axes in (loss_axes, elbo_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path)


def _grouped_bars(bars: dict[str, list[float]], **labels) -> tuple[Figure, Axes]:
    """One group of bars per position, one bar per variant in each group, groups centred on the positions."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(bars)
    for i, (name, heights) in enumerate(bars.items()):
        axes.bar([position - 0.4 + (i + 0.5) * width for position in range(len(heights))], heights, width, label=name)
    axes.set(**labels)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def kl_per_dim(results: list[VariantResults], path: Path) -> None:
    """Each variant's KL per latent dimension, sorted from the largest: how many dimensions carry information."""
    figure, axes = _grouped_bars(
        {v.name: v.kl_per_dim["kl"].sort_values(ascending=False).tolist() for v in results},
        xlabel="latent dimensions, sorted by KL", ylabel="KL (nats per image)", title="KL per latent dimension on the test set",
    )
    axes.set_xticks([])
    axes.legend()
    _save(figure, path)


def prior_classes(results: list[VariantResults], path: Path) -> None:
    """Share of each digit the judge reads in samples from the prior, per variant."""
    figure, axes = _grouped_bars(
        {v.name: [v.assess["prior_samples"]["shares"][d] for d in DIGITS] for v in results},
        xlabel="digit read by the judge", ylabel="share of the samples", title="What samples from the prior look like to the judge",
    )
    axes.axhline(1 / N_CLASSES, color="grey", linestyle="--", linewidth=1, label="uniform")
    axes.set_xticks(range(N_CLASSES), DIGITS)
    axes.legend()
    _save(figure, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


# (file name, heading, caption, width in pixels): every variant's picture side by side, the same size
PICTURES = [
    ("samples", "Samples from the prior", "Mean images of p(x|z) for z drawn from N(0, I), `render.grid_size` squared of "
     "them; a conditional variant is given the digits 0-9 in turn.", 260),
    ("reconstructions", "Test digits and their reconstructions", "The first test digits (top row) and their "
     "reconstructions through the posterior mean (bottom row).", 260),
    ("interpolation_3_to_8", "Interpolation", "Decoded points on the line between the posterior means of the first test 3 "
     "and the first test 8.", 520),
    ("traversals", "Latent traversals", "One row per most active latent dimension, most active first: that coordinate "
     "set to values from -`traversal.span` to +`traversal.span` prior standard deviations, the others held at the "
     "first test digit's posterior mean.", 340),
    ("latent_map", "The test set in latent space", "Posterior means of the test digits, their first two principal "
     "components, coloured by digit.", 340),
    ("digits_on_demand", "Digits on demand", "A conditional variant asked for each digit in turn, one row per digit.", 260),
]


def _pictures(results: list[VariantResults], images: dict[str, str]) -> list[str]:
    """One section per kind of picture, every variant that has it side by side at one width, with its caption."""
    sections = ["## Pictures"]
    for stem, heading, caption, width in PICTURES:
        shown = [v.name for v in results if stem != "digits_on_demand" or "conditional_accuracy" in v.assess]
        if not shown:
            continue
        side_by_side = width <= 340
        cells = [f'<img src="{images[name]}/{stem}.png" width="{width}" alt="{name}: {heading.lower()}">' for name in shown]
        if side_by_side:
            grid = ("<table><tr>" + "".join(f"<th>{name}</th>" for name in shown) + "</tr><tr>"
                    + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr></table>")
        else:
            grid = "<br>\n".join(cells)
        sections += [f"### {heading}", f"*{caption}*", grid]
    return sections


def markdown(results: list[VariantResults], judge: dict, figures: dict[str, str], images: dict[str, str]) -> str:
    """comparison/README.md: tables of every variant, and links to the figures and to each variant's images
    (folders relative to the report)."""
    ks = ", ".join(sorted({str(v.assess["iwae"]["k"]) for v in results}))
    summary = _table(
        ["variant", "epochs", "parameters", "training time", "pixels", "test ELBO", f"IWAE bound (k={ks})", "reconstruction",
         "KL", "binarised bound", "bits/dim", "active units", "mutual information", "digit entropy of prior samples",
         "conditional accuracy"],
        [
            [
                f"`{v.name}`" + (" †" if v.final_kl_weight < 1 else ""),
                str(len(v.curves)),
                f"{v.assess['n_parameters']:,}",
                f"{v.train['wall_seconds']:.0f} s",
                "binary" if v.assess["binarized"]["proposal"] == "q(z|b)" else "grey",
                f"{v.test['test']['elbo']:.2f}",
                f"{v.assess['iwae']['bound']:.2f}",
                f"{v.test['test']['rec']:.2f}",
                f"{v.test['test']['kl']:.2f}",
                f"{v.assess['binarized']['bound']:.2f}",
                f"{v.assess['binarized']['bits_per_dim']:.3f}",
                f"{v.assess['active_units']} of {v.assess['latent_dim']}",
                f"{v.assess['mutual_information']:.2f}",
                f"{v.assess['prior_samples']['entropy_bits']:.2f} bits" + ("*" if "conditional_accuracy" in v.assess else ""),
                _percent(v.assess["conditional_accuracy"]["overall"]) if "conditional_accuracy" in v.assess else "—",
            ]
            for v in results
        ],
    )
    binarized = results[0].assess["binarized"]
    floor = results[0].assess["grey_entropy_floor"]
    per_class = _table(
        ["variant", *DIGITS],
        [[f"`{v.name}`", *(f"{v.test['per_class'][d]['bce']:.1f}" for d in DIGITS)] for v in results],
    )
    prior = _table(
        ["variant", *DIGITS],
        [[f"`{v.name}`", *(_percent(v.assess["prior_samples"]["shares"][d]) for d in DIGITS)] for v in results],
    )
    conditional = [v for v in results if "conditional_accuracy" in v.assess]
    unfinished = [v for v in results if v.final_kl_weight < 1]
    sections = [
        "# vaelab: comparison of the variants",
        "Written by the pipeline's `report` stage from the metrics files of the same run (`reports/<variant>/*.json`, "
        "`curves.csv`, `reports/judge/metrics.json`); regenerate it with `dvc repro`, do not edit it.",
        "ELBOs, bounds, reconstruction and KL are in nats per test image (higher ELBO and bound are better).",
        "## Every variant",
        summary,
        "**Which figures compare with the literature.** A grey variant's test ELBO, IWAE bound and reconstruction are "
        "Bernoulli log-likelihoods of grey-level pixels, which no binary model assigns: they are not log p(x) of any "
        "distribution over images, and they carry a floor no model can remove, the binary entropy of the test pixels' "
        f"own grey levels, {floor:.2f} nats per image. Do not set them beside published binarised-MNIST figures. Because "
        "BCE is linear in its target, a grey ELBO is the average, over random binarisations b ~ Bernoulli(x), of the ELBO of b "
        "with the encoder fed x; the *binarised bound* measures that scale directly: the test set binarised once "
        f"(b = 1[u < x], seed {binarized['seed']}), and the importance-weighted bound on log p(b) with k = {binarized['k']} "
        "samples from the variant's own encoder: q(z|x) of the grey image for a grey variant (any proposal gives a valid "
        "lower bound; one fitted to b would give a tighter one), q(z|b) for a variant trained on binary pixels. That column "
        "and its bits per dimension (-bound / (784 ln 2)) compare with the binarised-MNIST literature, e.g. Burda et al. "
        "(2015), Table 1: -86.76 nats for a one-layer VAE, k = 5000."
        + (" A conditional variant's figures are given the digit's label: its binarised bound is on log p(b | label), "
           "which unconditional models do not compute." if any("conditional_accuracy" in v.assess for v in results) else ""),
        f"The IWAE bound (Burda et al., 2015) uses k importance samples per test image; k = 1 is the ELBO. An active "
        f"unit is a latent dimension whose posterior mean varies over the test set (variance above 0.01). Mutual "
        f"information I_q(x; z), in nats, as He et al. (2019) estimate it with the test set's posteriors as the aggregate "
        f"q(z): near 0 when the posterior has collapsed to the prior, at most the log of the number of test images. The judge, a "
        f"small CNN trained by the `judge` stage, reads {_percent(judge['test_accuracy'])} of the MNIST test digits "
        f"correctly; it reads the samples below. The digit entropy of samples from the prior is log2(10) = {math.log2(N_CLASSES):.2f} bits "
        f"when all ten digits are equally common. Conditional accuracy: the share of digits generated on demand that the judge "
        f"reads as the digit asked for.",
        *([f"† **KL warm-up unfinished**: {', '.join(f'`{v.name}` trained its last epoch at KL weight {v.final_kl_weight:.2f}' for v in unfinished)}. "
           "Its figures are not those of the schedule it names, and do not compare with the others'; give it more epochs "
           "than `kl_warmup_epochs`."] if unfinished else []),
        *(["\\* A conditional variant is given the ten labels in turn when it samples from the prior, so its samples "
           "cover the ten digits by construction; its conditional accuracy says how well it obeys the labels."] if conditional else []),
        "## Reconstruction error per digit",
        "BCE in nats per test image, decoding the posterior mean.",
        per_class,
        "## Digits the judge reads in samples from the prior",
        prior,
        f"![digits of prior samples]({figures['prior_classes']})",
    ]
    if conditional:
        sections += [
            "## Conditional accuracy per digit asked for",
            _table(["variant", *DIGITS], [[f"`{v.name}`", *(_percent(v.assess["conditional_accuracy"]["per_digit"][d]) for d in DIGITS)] for v in conditional]),
        ]
    sections += [
        "## Learning curves",
        f"![learning curves]({figures['learning_curves']})",
        "## Latent usage",
        f"![KL per latent dimension]({figures['kl_per_dim']})",
        *_pictures(results, images),
    ]
    return "\n\n".join(sections) + "\n"
