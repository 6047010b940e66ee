"""Stage assess@<variant>: likelihood bound, latent usage, and what the judge reads in the samples."""

import sys
import time

import torch

from vaelab import metrics, paths
from vaelab.data import load_split
from vaelab.errors import run_stage
from vaelab.judge import load_judge
from vaelab.models import load_trained
from vaelab.params import load_params, stage_variant
from vaelab.tracking import model_run
from vaelab.device import pick_device


def main() -> None:
    params = load_params()
    name = stage_variant(params, sys.argv)
    opts = params.assess
    device = pick_device()
    model = load_trained(paths.model_file(name), device)
    judge = load_judge(paths.judge_model_file(), device)
    binarize_seed = params.evaluate.binarize_seed
    grey = load_split(False, device)
    binary = grey.binarized(binarize_seed)
    trained_on_binary = params.variant(name).binarize
    test = binary if trained_on_binary else grey  # the pixels the variant models
    batch_size = params.evaluate.batch_size

    started = time.perf_counter()
    iwae = metrics.test_iwae(model, test, opts.iwae_k, batch_size, params.seed)
    iwae_seconds = time.perf_counter() - started
    # on the literature's scale: the test set binarised once, encoded as the variant was trained
    binarized = iwae if trained_on_binary else metrics.test_iwae(model, grey, opts.iwae_k, batch_size, params.seed, targets=binary)
    kl = metrics.kl_per_dimension(model, test, batch_size)
    generator = torch.Generator(device).manual_seed(params.seed)
    results = {
        "iwae": {"k": opts.iwae_k, "bound": iwae, "wall_seconds": iwae_seconds},
        "binarized": {
            "bound": binarized,
            "bits_per_dim": metrics.bits_per_dim(binarized),
            "k": opts.iwae_k,
            "seed": binarize_seed,
            "proposal": "q(z|b)" if trained_on_binary else "q(z|x)",
        },
        "grey_entropy_floor": metrics.binary_entropy_floor(grey),
        "active_units": metrics.active_units(metrics.posterior_means(model, test, batch_size)),
        # its own stream: the judged samples below draw the same numbers with or without it
        "mutual_information": metrics.mutual_information(model, test, batch_size, torch.Generator(device).manual_seed(params.seed)),
        "latent_dim": model.latent_dim,
        "n_parameters": model.n_parameters(),
        "kl_per_dim": {str(d): float(v) for d, v in enumerate(kl)},
        "prior_samples": metrics.judged_prior_samples(model, judge, opts.prior_samples, generator),
    }
    if model.n_classes:
        results["conditional_accuracy"] = metrics.conditional_accuracy(model, judge, opts.samples_per_digit, generator)
    paths.write_json(paths.assess_metrics_file(name), results)
    paths.write_csv(paths.kl_per_dim_file(name), [{"dim": d, "kl": float(v)} for d, v in enumerate(kl)])
    log_to_mlflow(params, name, results)
    print(
        f"{name}: IWAE bound {iwae:.2f} nats (k={opts.iwae_k}), binarised {binarized:.2f} ({results['binarized']['bits_per_dim']:.3f} bits/dim), "
        f"{results['active_units']} of {model.latent_dim} latent dimensions active, prior samples' digits "
        f"{results['prior_samples']['entropy_bits']:.2f} bits"
        + (f", {100 * results['conditional_accuracy']['overall']:.1f}% of digits on demand read as asked" if model.n_classes else "")
    )


def log_to_mlflow(params, name: str, results: dict) -> None:
    """Headline figures as metrics, a researcher sorts runs by them; settings as params; vectors as tables."""
    run = model_run(params, name, {**params.settings("assess", "evaluate"), "judge_sha256": paths.sha256(paths.judge_model_file())})
    headline = {
        "iwae_bound": results["iwae"]["bound"],
        "binarized_bound": results["binarized"]["bound"],
        "bits_per_dim": results["binarized"]["bits_per_dim"],
        "active_units": results["active_units"],
        "mutual_information": results["mutual_information"],
        "prior_digit_entropy_bits": results["prior_samples"]["entropy_bits"],
    }
    if "conditional_accuracy" in results:
        headline["conditional_accuracy"] = results["conditional_accuracy"]["overall"]
    run.log_metrics(headline)
    run.log_params({"n_parameters": str(results["n_parameters"])})
    run.set_tag("binarized_proposal", results["binarized"]["proposal"])
    run.log_table([{"dim": int(d), "kl": kl} for d, kl in results["kl_per_dim"].items()], "assess/kl_per_dim.json")
    per_digit = [{"digit": int(d), "share_of_prior_samples": share} for d, share in results["prior_samples"]["shares"].items()]
    if "conditional_accuracy" in results:
        for row in per_digit:
            row["conditional_accuracy"] = results["conditional_accuracy"]["per_digit"][str(row["digit"])]
    run.log_table(per_digit, "assess/judged_digits.json")


if __name__ == "__main__":
    run_stage(main)
