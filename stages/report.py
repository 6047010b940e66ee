"""Stage report: comparison/README.md and its figures, every variant of the pipeline side by side; the
headline figures DVC lists as metrics; the report as one HTML page in each variant's MLflow run."""

import os
import sys
import tempfile
from pathlib import Path

from vaelab import paths, report
from vaelab.errors import run_stage
from vaelab.params import load_params
from vaelab.tracking import report_run, runs_table_url


def main() -> None:
    params = load_params()
    results = [report.VariantResults.read(name) for name in params.pipeline]
    judge = report.read_json(paths.judge_metrics_file())
    out = paths.report_figures_dir()
    figures = {name: out / f"{name}.png" for name in ["learning_curves", "kl_per_dim", "prior_classes"]}
    report.learning_curves(results, figures["learning_curves"])
    report.kl_per_dim(results, figures["kl_per_dim"])
    report.prior_classes(results, figures["prior_classes"])
    readme = paths.report_file()
    links = {name: os.path.relpath(path, readme.parent) for name, path in figures.items()}
    images = {name: os.path.relpath(paths.images_dir(name), readme.parent) for name in params.pipeline}
    text = report.markdown(results, judge, links, images)
    with paths.atomic_path(readme) as tmp:
        tmp.write_text(text)
    summary = report.summary(results, judge)
    paths.write_json(paths.report_metrics_file(), summary)
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "report.html"
        page.write_text(report.html_page(text, readme.parent, "vaelab: comparison of the variants"))
        # to the runs that hold the figures it shows: those computed with these settings
        settings = {**params.settings("evaluate", "render", "traversal", "assess"), "judge_sha256": paths.sha256(paths.judge_model_file())}
        for name in params.pipeline:
            run = report_run(params, name, settings)
            if run:
                run.log_artifact(str(page))
    print(f"report: {len(results)} variants side by side in {readme}; headline figures in {paths.report_metrics_file()}")
    print(f"report: MLflow's runs table: {runs_table_url(params.mlflow)}")
    if any(v.final_kl_weight < 1 for v in results):
        print("report: KL warm-up unfinished for " + ", ".join(v.name for v in results if v.final_kl_weight < 1) + " (marked †)", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
