"""Stage report: comparison/README.md and its figures, every variant of the pipeline side by side;
logged to each variant's run."""

import os

from vaelab import paths, report
from vaelab.errors import run_stage
from vaelab.params import load_params
from vaelab.tracking import model_run


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
    with paths.atomic_path(readme) as tmp:
        tmp.write_text(report.markdown(results, judge, links, images))
    for name in params.pipeline:
        run = model_run(params, name)
        run.log_artifact(str(readme), artifact_path="report")
        run.log_artifacts(str(out), artifact_path="report/figures")


if __name__ == "__main__":
    run_stage(main)
