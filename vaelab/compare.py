"""Compare DVC experiments: a Markdown table of the groups of runs that differ only in their seed, each
metric as mean ± sample sd over the seeds, and plots of the headline figures against the swept param.

    python -m vaelab.compare                     # HEAD's experiments: elbo.* and iwae.*, elbo.png, iwae.png
    python -m vaelab.compare --metric active_units --metric judge_accuracy --plot iwae.vae
    python -m vaelab.compare --metric all --all-commits --out comparison/all

Metrics are named as `dvc exp show` names them: comparison/metrics.json holds each figure per variant,
so its columns are `elbo.vae`, `elbo.cvae`, `iwae.vae`, ..., `judge_accuracy`; a NAME is one column
or the figure before the dot (`elbo`: every variant's). Queued, running and failed experiments are
skipped; the rest are grouped by every param except the seed. It writes OUT/README.md and, per plotted
NAME, OUT/NAME.png: the mean against the swept param, sd as error bars, one line per variant (and per
value of any other swept param).
"""

import argparse
import math
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from vaelab.errors import VaelabError, run_stage

DEFAULT_OUT = Path("comparison") / "experiments"
HEADLINE = ["elbo", "iwae"]  # the default: every figure makes the table too wide to read
LABELS = {"elbo": "test ELBO (nats per image)", "iwae": "IWAE bound (nats per image)",
          "binarized_bound": "binarised-MNIST bound (nats per image)", "active_units": "active latent units",
          "judge_accuracy": "judge's test accuracy"}
COMMIT = "commit"  # a grouping key when experiments of several commits are compared
FINISHED = {None, "Success"}  # DVC's State: None for experiments read from git refs alone


def collect(repo: str | Path, all_commits: bool = False) -> tuple[pd.DataFrame, list[str], list[str], Counter, Path]:
    """The finished experiments `dvc exp show` lists, one row each; their numeric metrics; their params;
    how many were skipped, by why; the repository's root."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.repo.experiments.show import tabulate
    from dvc.scm import SCMError

    if not Path(repo).is_dir():
        raise VaelabError(f"--repo {repo}: no such directory (a local DVC repository is needed)")
    try:
        with Repo(repo) as dvc_repo:
            # dvc.api.exp_show takes no all_commits and merges metrics with params: this is what it calls
            table, headers = tabulate(dvc_repo.experiments.show(all_commits=all_commits, hide_workspace=True),
                                      fill_value=None)
            root = Path(dvc_repo.root_dir)
    except NotDvcRepoError:
        raise VaelabError(f"{Path(repo).resolve()} is not in a DVC repository (no .dvc/ here or above): run "
                          "this where `dvc exp show` works, or name the repository with --repo") from None
    except SCMError as err:  # e.g. `dvc init --no-scm`: experiments live in git
        raise VaelabError(f"{Path(repo).resolve()}: DVC experiments need a git repository "
                          f"({' '.join(str(err).split())})") from None
    metrics, params = list(headers["metrics"]), list(headers["params"])
    rows, skipped, commit = [], Counter(), None
    for row in table.as_dict():
        if row["typ"] == "baseline":  # the commit's own results, not an experiment; its rows follow it
            commit = row["rev"]
        elif row.get("State") not in FINISHED:
            skipped[str(row["State"]).lower()] += 1
        else:
            rows.append({COMMIT: commit, **{name: _str(row.get(name)) for name in metrics + params}})
    runs = pd.DataFrame(rows, columns=[COMMIT, *metrics, *params])
    runs[metrics] = runs[metrics].apply(pd.to_numeric, errors="coerce")
    finished = runs[metrics].notna().any(axis=1)
    if (~finished).any():
        skipped["without metrics"] += int((~finished).sum())
    runs = runs[finished].reset_index(drop=True)
    for name in params:  # a param is a number when all its values are; else every value is text
        numbers = pd.to_numeric(runs[name], errors="coerce")
        runs[name] = numbers if numbers.notna().all() else runs[name].map(_text)
    return runs, [m for m in metrics if runs[m].notna().any()], params, skipped, root


def _str(cell) -> str | None:
    """DVC's cells are rich-text objects; a value missing in one experiment reads "None", "-" or ""."""
    return None if cell is None or str(cell) in ("", "-", "!", "None") else str(cell)


def _text(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    return "—" if value is None else str(value)


def pick(names: list[str], metrics: list[str], what: str) -> dict[str, list[str]]:
    """Each name's metric columns: the column itself, or every `name.variant`; `all` is every metric."""
    if "all" in names:
        return {m: [m] for m in metrics}
    picked = {name: [m for m in metrics if m == name or m.startswith(f"{name}.")] for name in names}
    for name, columns in picked.items():
        if not columns:
            raise VaelabError(f"{what} {name!r} names no numeric metric of these experiments; "
                              f"they have: {', '.join(metrics)}")
    return picked


def summarise(runs: pd.DataFrame, params: list[str], metrics: list[str], seed: str | None) -> tuple[pd.DataFrame, list[str]]:
    """One row per group of runs that agree on every param but the seed: the keys that vary across
    groups, n, the seeds, then each metric's `mean`, `std` (ddof 1) and `count`, as `metric\\tstat`;
    and the keys that vary (the swept ones), in DVC's order."""
    keys = [p for p in params if p != seed] + ([COMMIT] if runs[COMMIT].nunique() > 1 else [])
    swept = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    grouped = runs.groupby(swept or (lambda _: "all"), dropna=False)
    groups = grouped[metrics].agg(["mean", "std", "count"])
    groups.columns = [f"{m}\t{stat}" for m, stat in groups.columns]
    groups["n"] = grouped.size()
    if seed:
        groups["seeds"] = grouped[seed].agg(lambda s: ", ".join(_text(v) for v in sorted(s.dropna())))
    return groups.reset_index(drop=not swept), swept


def mean_sd(group: pd.Series, metric: str) -> str:
    mean, sd, count, n = group[f"{metric}\tmean"], group[f"{metric}\tstd"], int(group[f"{metric}\tcount"]), int(group["n"])
    text = "—" if count == 0 else f"{mean:.6g}" if count == 1 else f"{mean:.6g} ± {sd:.3g}"
    return text if count in (0, n) else f"{text} ({count} of {n} runs)"


def markdown_table(groups: pd.DataFrame, swept: list[str], metrics: list[str]) -> str:
    heads = [*swept, "n", *(["seeds"] if "seeds" in groups else []), *metrics]
    lines = [heads, ["---" if h in swept or h == "seeds" else "---:" for h in heads]]
    for _, group in groups.iterrows():
        lines.append([_text(group[h]) if h in swept or h == "seeds" else str(int(group["n"])) if h == "n"
                      else mean_sd(group, h) for h in heads])
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def plot(groups: pd.DataFrame, swept: list[str], name: str, columns: list[str], x: str | None, path: Path) -> None:
    """The columns' means against x, sd as error bars: one line per column and value of the other swept keys."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.subplots()
    xs = groups[x] if x else pd.Series("all runs", index=groups.index)
    numeric = pd.api.types.is_numeric_dtype(xs) and xs.notna().all()
    if not numeric:  # text values: categories in the table's order
        categories = list(dict.fromkeys(map(_text, xs)))
        xs = xs.map(lambda v: categories.index(_text(v)))
        axes.set_xticks(range(len(categories)), categories)
        axes.set_xlim(-0.5, len(categories) - 0.5)
    others = [k for k in swept if k != x]
    for key, part in groups.groupby(others, dropna=False, sort=False) if others else [((), groups)]:
        key = key if isinstance(key, tuple) else (key,)
        for column in columns:  # groups are sorted by their keys, so each part's xs ascend
            label = ", ".join([column.split(".", 1)[1]] * ("." in column) + [f"{k}={_text(v)}" for k, v in zip(others, key)])
            axes.errorbar(xs[part.index], part[f"{column}\tmean"], yerr=part[f"{column}\tstd"].fillna(0.0), marker="o",
                          capsize=4, label=label or None, linestyle="-" if numeric else "none")
    axes.set_xlabel(x or "")
    axes.set_ylabel(LABELS.get(name.split(".")[0], name))
    axes.set_title(f"{name} against {x or 'no swept param'}: mean ± sd over {'seeds' if 'seeds' in groups else 'runs'}",
                   fontsize=10)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[1]:
        axes.legend(fontsize=8)
    write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))


def write(path: Path, save) -> None:
    """Write through a temporary file renamed into place, so that a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vaelab.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="the DVC repository (default: the one holding the current directory)")
    parser.add_argument("--out", type=Path, help=f"where to write README.md and the plots (default: {DEFAULT_OUT} in the repository)")
    parser.add_argument("--metric", action="append", default=[], metavar="NAME",
                        help="a metric for the table: a column of `dvc exp show` (elbo.vae) or a figure (elbo: every "
                             "variant's); `all` for every metric (repeat; default: elbo and iwae)")
    parser.add_argument("--plot", action="append", default=[], metavar="NAME",
                        help="a column or figure to plot against the swept param (repeat; default: elbo and iwae)")
    parser.add_argument("--seed-param", default="seed", metavar="NAME", help="the param whose runs are averaged (default: seed)")
    parser.add_argument("-A", "--all-commits", action="store_true", help="the experiments of every commit, not only HEAD's")
    args = parser.parse_args(argv)

    runs, metrics, params, skipped, root = collect(args.repo, args.all_commits)
    why = ", ".join(f"{count} {why}" for why, count in sorted(skipped.items()))
    if skipped:
        print(f"vaelab: skipped {plural(skipped.total(), 'experiment')} ({why})", file=sys.stderr)
    if runs.empty or not metrics:
        raise VaelabError(f"no finished experiments {'in any commit' if args.all_commits else 'of HEAD'} with metrics"
                          f"{f' ({why})' if skipped else ''}: run some first, e.g. `dvc exp run --queue -S seed=0,1` "
                          "then `dvc queue start`, or add --all-commits")
    headline = [h for h in HEADLINE if any(m == h or m.startswith(f"{h}.") for m in metrics)] or [metrics[0]]
    table = pick(args.metric or headline, metrics, "--metric")
    table = list(dict.fromkeys(m for columns in table.values() for m in columns))
    plots = pick(args.plot or headline, metrics, "--plot")
    seed = args.seed_param if args.seed_param in params else None
    groups, swept = summarise(runs, params, list(dict.fromkeys(table + sum(plots.values(), []))), seed)
    x = next((k for k in swept if pd.api.types.is_numeric_dtype(groups[k])), swept[0] if swept else None)

    out = args.out if args.out is not None else root / DEFAULT_OUT
    figures = {name: out / f"{name}.png" for name in plots}
    for name, columns in plots.items():
        plot(groups, swept, name, columns, x, figures[name])
    commits = ", ".join(f"`{c}`" for c in dict.fromkeys(runs[COMMIT]))
    text = "\n\n".join([
        "# Experiments compared",
        f"{plural(len(runs), 'finished experiment')} of {commits}, grouped into {plural(len(groups), 'group')} of runs "
        f"that agree on every param{f' except `{seed}`' if seed else ' (no seed param: a group may hold one run)'}; "
        f"{', '.join(f'`{k}`' for k in swept) or 'no other param'} {'vary' if len(swept) > 1 else 'varies'}. "
        f"Each cell is the mean ± sample sd (ddof 1) over the group's n runs{f'; left out: {why}' if skipped else ''}.",
        markdown_table(groups, swept, table),
        *(f"![{name} against {x or 'all runs'}]({path.name})" for name, path in figures.items()),
    ]) + "\n"
    write(out / "README.md", lambda tmp: tmp.write_text(text))
    print(f"wrote {out / 'README.md'} ({plural(len(groups), 'group')} of {plural(len(runs), 'experiment')}) and "
          f"{', '.join(str(path) for path in figures.values())}")


if __name__ == "__main__":
    run_stage(main)
