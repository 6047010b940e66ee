"""Pictures of what a model learned: (N, 1, 28, 28) images in [0, 1] laid out by make_grid, and matplotlib figures."""

from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from vaelab.data import N_CLASSES, Split
from vaelab.models import VAE
from vaelab.paths import atomic_path


def _as_images(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.reshape(-1, 1, 28, 28).cpu()


def _onehot(labels: torch.Tensor, model: VAE) -> torch.Tensor | None:
    return F.one_hot(labels, N_CLASSES).float() if model.n_classes else None


PADDING = 2


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    grid = make_grid(images, nrow=nrow, padding=PADDING, pad_value=0.5)
    with atomic_path(path) as tmp:
        save_image(grid, tmp)


def save_labelled_grid(images: torch.Tensor, path: Path, columns: list[str], rows: list[str], xlabel: str, ylabel: str, title: str) -> None:
    """The grid of save_grid, len(columns) digits per row, with its axes named and each row and column labelled."""
    grid = make_grid(images, nrow=len(columns), padding=PADDING, pad_value=0.5)[0]
    cell = 28 + PADDING
    figure = Figure(figsize=(1.2 + 0.55 * len(columns), 1.0 + 0.55 * len(rows)), layout="constrained")
    axes = figure.subplots()
    axes.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    axes.set_xticks([PADDING + cell * i + 14 for i in range(len(columns))], columns)
    axes.set_yticks([PADDING + cell * i + 14 for i in range(len(rows))], rows)
    axes.tick_params(length=0)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)


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


@torch.inference_mode()
def traversals(model: VAE, test: Split, dims: list[int], steps: int, span: float) -> torch.Tensor:
    """One row per latent dimension: the first test digit's posterior mean with that coordinate
    swept from -span to +span (prior standard deviations), all other coordinates held."""
    x, onehot = test.images[:1], _onehot(test.labels[:1], model)
    mu, _ = model.encode(x, onehot)
    z = mu.repeat(len(dims), steps, 1)  # (rows, steps, latent_dim)
    for row, dim in enumerate(dims):
        z[row, :, dim] = torch.linspace(-span, span, steps, device=z.device)
    z = z.flatten(0, 1)
    return _as_images(torch.sigmoid(model.decode(z, None if onehot is None else onehot.expand(len(z), -1))))


def latent_map(means: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> None:
    """Scatter of the posterior means in 2-D, coloured by digit: the first two principal components
    when latent_dim > 2, the coordinates themselves otherwise."""
    means = means.double().cpu()
    if means.shape[1] > 2:
        centred = means - means.mean(dim=0)
        _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
        coords = centred @ directions[:2].T
        explained = singular.square() / singular.square().sum()
        axes_names = [f"PC{i + 1} ({explained[i]:.0%} of the variance)" for i in range(2)]
    else:
        coords = torch.cat([means, torch.zeros(len(means), 2 - means.shape[1], dtype=means.dtype)], dim=1)
        axes_names = ["z1", "z2" if means.shape[1] == 2 else "(latent_dim is 1)"]
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    axes = figure.subplots()
    points = axes.scatter(coords[:, 0], coords[:, 1], c=labels.cpu(), cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.6, linewidths=0)
    figure.colorbar(points, ax=axes, ticks=range(N_CLASSES), label="digit")
    axes.set(xlabel=axes_names[0], ylabel=axes_names[1], title=title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110)
