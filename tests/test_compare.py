"""Comparing experiments: `python -m vaelab.compare` on a tiny git + DVC repository (not the vaelab
pipeline: one stage that writes comparison/metrics.json, laid out as the pipeline's, from params by a
known formula) with three latent sizes by two seeds, and one experiment that fails; the table's means
and sds are checked against the formula, the plots are read back as images."""

import math
import statistics
import textwrap
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from tests.conftest import PROJECT, run
from vaelab.compare import main, markdown_table, plot, summarise

LATENT_DIMS, SEEDS = [5, 10, 20], [0, 1]
ENV = {"PYTHONPATH": str(PROJECT)}  # vaelab importable from the experiment repository

MAKE_METRICS = textwrap.dedent("""\
    import json, os, yaml
    from formula import FIGURES
    p = yaml.safe_load(open("params.yaml"))
    os.makedirs("comparison", exist_ok=True)
    metrics = {figure: {variant: f(p["latent_dim"], p["seed"]) for variant, f in variants.items()}
               for figure, variants in FIGURES.items()}
    json.dump({**metrics, "judge_accuracy": 0.9 + 0.01 * p["seed"] - p["lr"]}, open("comparison/metrics.json", "w"))
""")
FORMULA = textwrap.dedent("""\
    FIGURES = {"elbo": {"vae": lambda d, s: -100 - 100 / d + 0.5 * s, "cvae": lambda d, s: -90 - 50 / d - 0.25 * s},
               "iwae": {"vae": lambda d, s: -97 - 90 / d + 0.5 * s, "cvae": lambda d, s: -88 - 40 / d + 0.1 * s}}
""")
_formula: dict = {}
exec(FORMULA, _formula)  # the stage's own formula, to check the table against
FIGURES = _formula["FIGURES"]
HEADLINE_COLUMNS = [f"{figure}.{variant}" for figure, variants in FIGURES.items() for variant in variants]

DVC_YAML = textwrap.dedent("""\
    stages:
      metrics:
        cmd: python make_metrics.py
        deps: [make_metrics.py, formula.py]
        params: [seed, latent_dim, lr]
        metrics:
          - comparison/metrics.json:
              cache: false
""")


def formula(column: str):
    figure, variant = column.split(".")
    return FIGURES[figure][variant]


def git_dvc_repo(path: Path) -> Path:
    """A git + DVC repository with the one-stage pipeline, committed."""
    path.mkdir()
    (path / "params.yaml").write_text("seed: 0\nlatent_dim: 10\nlr: 0.001\n")
    (path / "make_metrics.py").write_text(MAKE_METRICS)
    (path / "formula.py").write_text(FORMULA)
    (path / "dvc.yaml").write_text(DVC_YAML)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.name", "vaelab tests"],
                    ["git", "config", "user.email", "tests@vaelab.invalid"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "pipeline"]):
        run(command, path)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """Three latent sizes by two seeds, and one experiment that fails (latent_dim=0). Most run in the
    workspace, which is quicker; the last size and the failure through the queue, as users run them."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("compare") / "repo")
    run(["dvc", "repro", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline results"], repo)
    for dim in LATENT_DIMS[:-1]:
        for seed in SEEDS:
            run(["dvc", "exp", "run", "-q", "-S", f"latent_dim={dim}", "-S", f"seed={seed}"], repo)
    run(["dvc", "exp", "run", "--queue", "-S", f"latent_dim={LATENT_DIMS[-1]}", "-S", "seed=0,1"], repo)
    run(["dvc", "exp", "run", "--queue", "-S", "latent_dim=0"], repo)  # ZeroDivisionError in the stage
    run(["dvc", "exp", "run", "--run-all", "-j", "1"], repo, check=False)  # the failed one may set the exit code
    return repo


def compare(repo: Path, *args: str, check: bool = True):
    return run(["python", "-m", "vaelab.compare", *args], repo, env=ENV, check=check)


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of the one Markdown table in text, as {header: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    heads = split(lines[0])
    assert set(lines[1]) <= set("|-: ")
    return [dict(zip(heads, split(line), strict=True)) for line in lines[2:]]


def assert_mean_and_sd(cell: str, values: list[float]) -> None:
    mean, sd = map(float, cell.split(" ± "))
    assert math.isclose(mean, statistics.mean(values), rel_tol=1e-5), (cell, values)
    assert math.isclose(sd, statistics.stdev(values), rel_tol=2e-3), (cell, values)  # printed to 3 digits


def assert_image(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_the_comparison_tabulates_and_plots_elbo_and_iwae_of_each_variant_over_seeds(swept):
    result = compare(swept)

    out = swept / "comparison" / "experiments"
    assert result.stdout.strip().splitlines() == [
        f"wrote {out / 'README.md'} (3 groups of 6 experiments) and {out / 'elbo.png'}, {out / 'iwae.png'}"]
    assert result.stderr.strip().splitlines() == ["vaelab: skipped 1 experiment (1 failed)"]
    readme = (out / "README.md").read_text()
    assert "6 finished experiments of `main`" in readme and "except `seed`; `latent_dim` varies" in readme
    rows = markdown_rows(readme)
    assert list(rows[0]) == ["latent_dim", "n", "seeds", *HEADLINE_COLUMNS]  # not judge_accuracy
    assert [row["latent_dim"] for row in rows] == [str(d) for d in LATENT_DIMS]
    for row in rows:
        assert (row["n"], row["seeds"]) == ("2", "0, 1")
        for column in HEADLINE_COLUMNS:
            assert_mean_and_sd(row[column], [formula(column)(int(row["latent_dim"]), seed) for seed in SEEDS])
    for figure in FIGURES:
        assert f"![{figure} against latent_dim]({figure}.png)" in readme
        assert_image(out / f"{figure}.png")


def test_metric_and_plot_take_a_figure_a_column_or_all(swept, tmp_path, capsys):
    main(["--repo", str(swept), "--metric", "judge_accuracy", "--metric", "iwae", "--plot", "elbo.cvae",
          "--out", str(tmp_path / "picked")])
    rows = markdown_rows((tmp_path / "picked" / "README.md").read_text())
    assert list(rows[0]) == ["latent_dim", "n", "seeds", "judge_accuracy", "iwae.vae", "iwae.cvae"]
    assert_mean_and_sd(rows[0]["judge_accuracy"], [0.9 + 0.01 * seed - 0.001 for seed in SEEDS])
    assert sorted(path.name for path in (tmp_path / "picked").iterdir()) == ["README.md", "elbo.cvae.png"]
    assert_image(tmp_path / "picked" / "elbo.cvae.png")

    main(["--repo", str(swept), "--metric", "all", "--out", str(tmp_path / "all")])
    rows = markdown_rows((tmp_path / "all" / "README.md").read_text())
    assert list(rows[0]) == ["latent_dim", "n", "seeds", *HEADLINE_COLUMNS, "judge_accuracy"]
    assert capsys.readouterr().err.count("skipped 1 experiment (1 failed)") == 2


def test_an_unknown_metric_is_one_line_that_lists_the_metrics_there_are(swept):
    result = compare(swept, "--plot", "test_elbo", check=False)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "vaelab: skipped 1 experiment (1 failed)",
        "vaelab: error: --plot 'test_elbo' names no numeric metric of these experiments; they have: "
        f"{', '.join(HEADLINE_COLUMNS)}, judge_accuracy"]


def test_no_experiments_or_no_dvc_repository_is_one_line(tmp_path):
    repo = git_dvc_repo(tmp_path / "fresh")
    result = compare(repo, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "vaelab: error: no finished experiments of HEAD with metrics: run some first, e.g. "
        "`dvc exp run --queue -S seed=0,1` then `dvc queue start`, or add --all-commits"]

    (tmp_path / "plain").mkdir()
    result = compare(tmp_path / "plain", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"vaelab: error: {tmp_path / 'plain'} is not in a DVC repository (no .dvc/ here or above): run this where "
        "`dvc exp show` works, or name the repository with --repo"]


def test_two_swept_params_give_one_line_per_variant_and_value_of_the_other(tmp_path):
    """The grouping and the plot alone, on runs made up here: latent_dim by activation by three seeds."""
    runs = pd.DataFrame([
        {"commit": "main", "elbo.vae": -dim - seed * (1 if act == "relu" else 2), "elbo.cvae": -dim / 2 - seed,
         "seed": float(seed), "latent_dim": float(dim), "act": act, "lr": 0.001}
        for dim in (20, 10) for act in ("tanh", "relu") for seed in (0, 1, 2)])
    params = ["seed", "latent_dim", "act", "lr"]
    groups, swept = summarise(runs, params, ["elbo.vae", "elbo.cvae"], "seed")

    assert swept == ["latent_dim", "act"]
    rows = markdown_rows(markdown_table(groups, swept, ["elbo.vae"]))
    assert [(r["latent_dim"], r["act"], r["n"], r["seeds"]) for r in rows] == [
        ("10", "relu", "3", "0, 1, 2"), ("10", "tanh", "3", "0, 1, 2"), ("20", "relu", "3", "0, 1, 2"),
        ("20", "tanh", "3", "0, 1, 2")]
    for row in rows:
        part = runs[(runs.latent_dim == float(row["latent_dim"])) & (runs.act == row["act"])]
        assert_mean_and_sd(row["elbo.vae"], list(part["elbo.vae"]))

    for x in ("latent_dim", "act"):  # a numeric axis, and a categorical one
        plot(groups, swept, "elbo", ["elbo.vae", "elbo.cvae"], x, tmp_path / f"{x}.png")
        assert_image(tmp_path / f"{x}.png")

    one = runs[(runs.latent_dim == 10) & (runs.act == "relu") & (runs.seed == 0)]
    groups, swept = summarise(one, params, ["elbo.vae"], "seed")
    assert markdown_rows(markdown_table(groups, swept, ["elbo.vae"])) == [{"n": "1", "seeds": "0", "elbo.vae": "-10"}]
