"""Pictures of what a model learned, as (N, 1, 28, 28) images in [0, 1] laid out by make_grid."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from vaelab.data import N_CLASSES, Split
from vaelab.models import VAE
from vaelab.paths import atomic_path


def _as_images(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.reshape(-1, 1, 28, 28).cpu()


def _onehot(labels: torch.Tensor, model: VAE) -> torch.Tensor | None:
    return F.one_hot(labels, N_CLASSES).float() if model.n_classes else None


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=0.5)
    with atomic_path(path) as tmp:
        save_image(grid, tmp)


@torch.inference_mode()
def reconstructions(model: VAE, test: Split, n: int) -> torch.Tensor:
    """The first n test digits above their reconstructions through the posterior mean."""
    x, onehot = test.images[:n], _onehot(test.labels[:n], model)
    mu, _ = model.encode(x, onehot)
    return _as_images(torch.cat([x, torch.sigmoid(model.decode(mu, onehot))]))


@torch.inference_mode()
def prior_samples(model: VAE, n: int, generator: torch.Generator) -> torch.Tensor:
    """Mean images of p(x|z) for z drawn from the prior; a CVAE cycles through the digits."""
    device = next(model.parameters()).device
    z = torch.randn(n, model.latent_dim, generator=generator, device=device)
    onehot = _onehot(torch.arange(n, device=device) % N_CLASSES, model)
    return _as_images(torch.sigmoid(model.decode(z, onehot)))


@torch.inference_mode()
def digits_on_demand(model: VAE, per_digit: int, generator: torch.Generator) -> torch.Tensor:
    """A CVAE's answer to 'draw me a d', per_digit times for each digit d: one row per digit."""
    device = next(model.parameters()).device
    labels = torch.arange(N_CLASSES, device=device).repeat_interleave(per_digit)
    z = torch.randn(len(labels), model.latent_dim, generator=generator, device=device)
    return _as_images(torch.sigmoid(model.decode(z, _onehot(labels, model))))


@torch.inference_mode()
def interpolation(model: VAE, test: Split, start_digit: int, end_digit: int, steps: int) -> torch.Tensor:
    """Decoded points on the straight line between the posterior means of two test digits.

    A CVAE's label moves along the same line, from one one-hot vector to the other.
    """
    ends = torch.stack([(test.labels == start_digit).nonzero()[0, 0], (test.labels == end_digit).nonzero()[0, 0]])
    x, onehot = test.images[ends], _onehot(test.labels[ends], model)
    mu, _ = model.encode(x, onehot)
    t = torch.linspace(0, 1, steps, device=mu.device).unsqueeze(1)
    z = (1 - t) * mu[0] + t * mu[1]
    path_onehot = None if onehot is None else (1 - t) * onehot[0] + t * onehot[1]
    return _as_images(torch.sigmoid(model.decode(z, path_onehot)))
