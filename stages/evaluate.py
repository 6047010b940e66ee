"""Stage evaluate@<variant>: test ELBO and per-digit reconstruction error on the full test set."""

import sys

from vaelab import paths
from vaelab.data import load_split
from vaelab.errors import run_stage
from vaelab.metrics import per_class_reconstruction, test_elbo
from vaelab.models import load_trained
from vaelab.params import load_params, stage_variant
from vaelab.tracking import model_run
from vaelab.device import pick_device


def main() -> None:
    params = load_params()
    name = stage_variant(params, sys.argv)
    device = pick_device()
    model = load_trained(paths.model_file(name), device)
    test = load_split(False, device, binarize_seed=params.test_binarize_seed(name))
    metrics = {
        "test": test_elbo(model, test, params.evaluate.batch_size, params.seed),
        "per_class": per_class_reconstruction(model, test, params.evaluate.batch_size),
    }
    paths.write_json(paths.test_metrics_file(name), metrics)
    model_run(params, name).log_metrics(metrics)


if __name__ == "__main__":
    run_stage(main)
