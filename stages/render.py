"""Stage render@<variant>: PNGs of reconstructions, prior samples, interpolations, latent traversals,
the latent map of the test set (and digits on demand)."""

import shutil
import sys

import torch

from vaelab import paths, render
from vaelab.data import load_split
from vaelab.errors import run_stage
from vaelab.metrics import latent_activity, posterior_means
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
    generator = torch.Generator(device).manual_seed(params.seed)
    opts = params.render
    pictures = {
        "reconstructions.png": (render.reconstructions(model, test, opts.n_images), opts.n_images),
        "samples.png": (render.prior_samples(model, opts.grid_size**2, generator), opts.grid_size),
    }
    if model.n_classes:
        pictures["digits_on_demand.png"] = (render.digits_on_demand(model, opts.grid_size, generator), opts.grid_size)
    out = paths.images_dir(name)
    shutil.rmtree(out, ignore_errors=True)
    for filename, (images, nrow) in pictures.items():
        render.save_grid(images, out / filename, nrow)

    steps = opts.interpolation_steps
    render.save_labelled_grid(
        render.interpolation(model, test, 3, 8, steps), out / "interpolation_3_to_8.png",
        columns=[f"{i / (steps - 1):.2g}" for i in range(steps)], rows=[""], xlabel="t: z = (1 - t) z(3) + t z(8)", ylabel="",
        title=f"{name}: from the first test 3 to the first test 8, through the posterior means",
    )
    means = posterior_means(model, test, params.evaluate.batch_size)
    traversal = params.traversal
    most_active = latent_activity(means).argsort(descending=True)[: traversal.dims].tolist()
    render.save_labelled_grid(
        render.traversals(model, test, most_active, traversal.steps, traversal.span), out / "traversals.png",
        columns=[f"{v:+.1f}" for v in torch.linspace(-traversal.span, traversal.span, traversal.steps).tolist()],
        rows=[f"z{d}" for d in most_active], xlabel="value of the dimension (prior standard deviations)",
        ylabel="latent dimension, most active first", title=f"{name}: traversals of the first test digit's code",
    )
    render.latent_map(means, test.labels, out / "latent_map.png", f"{name}: posterior means of the {len(test)} test digits")
    model_run(params, name, params.settings("render", "traversal", "evaluate")).log_artifacts(str(out), artifact_path="images")
    print(f"{name}: {len(list(out.iterdir()))} pictures in {out}: {', '.join(sorted(p.stem for p in out.iterdir()))}")


if __name__ == "__main__":
    run_stage(main)
