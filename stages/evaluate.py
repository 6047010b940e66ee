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
    run = model_run(params, name, params.settings("evaluate"))
    # a training run has them to the bit as its curves' last epoch; a run opened for a model trained elsewhere does not
    if "test_elbo" not in run.metrics():
        run.log_metrics({f"test_{key}": value for key, value in metrics["test"].items()}, step=params.variant(name).epochs)
    run.log_table([{"digit": int(d), **errors} for d, errors in metrics["per_class"].items()], "evaluate/per_digit_reconstruction.json")
    worst = max(metrics["per_class"], key=lambda d: metrics["per_class"][d]["bce"])
    test_figures = metrics["test"]
    print(
        f"{name}: test ELBO {test_figures['elbo']:.2f} nats (reconstruction {test_figures['rec']:.2f}, KL {test_figures['kl']:.2f}) "
        f"on {len(test)} images; hardest digit to reconstruct: {worst} ({metrics['per_class'][worst]['bce']:.1f} nats)"
    )


if __name__ == "__main__":
    run_stage(main)
