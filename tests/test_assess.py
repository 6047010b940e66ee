"""Latent usage and judged samples: active units, KL per dimension, class shares and their entropy."""

import math

import pytest
import torch

from vaelab import metrics, render
from vaelab.data import Split
from vaelab.models import VAE

LATENT_DIM = 4


def model_ignoring(dims: list[int]) -> VAE:
    """A VAE whose posterior mean does not depend on the image in the given dimensions."""
    torch.manual_seed(0)
    model = VAE(latent_dim=LATENT_DIM, hidden=[16])
    head = model.encoder[-1]  # emits mu (the first LATENT_DIM rows) and logvar side by side
    with torch.no_grad():
        head.weight[:LATENT_DIM] *= 10  # the used dimensions vary well above the threshold
        head.weight[dims] = 0
    return model.eval()


def random_split(n: int = 200) -> Split:
    generator = torch.Generator().manual_seed(1)
    return Split(torch.rand(n, 784, generator=generator), torch.arange(n) % 10)


def test_dimensions_the_encoder_ignores_are_exactly_the_inactive_units():
    means = metrics.posterior_means(model_ignoring([1, 3]), random_split(), batch_size=64)

    activity = metrics.latent_activity(means)

    assert activity[1] == 0 and activity[3] == 0
    assert (activity[[0, 2]] > metrics.ACTIVE_UNIT_THRESHOLD).all()
    assert metrics.active_units(means) == 2


def test_kl_per_dimension_sums_to_the_kl_term_of_the_elbo():
    model, split = model_ignoring([2]), random_split()

    per_dim = metrics.kl_per_dimension(model, split, batch_size=64)

    assert per_dim.shape == (LATENT_DIM,) and (per_dim >= 0).all()
    assert float(per_dim.sum()) == pytest.approx(metrics.test_elbo(model, split, 64, seed=0)["kl"], rel=1e-5)


def test_class_shares_and_their_entropy():
    uniform = metrics.class_shares(torch.arange(1000) % 10)
    assert uniform.tolist() == [0.1] * 10
    assert metrics.entropy_bits(uniform) == pytest.approx(math.log2(10))
    assert metrics.entropy_bits(metrics.class_shares(torch.full((50,), 7))) == 0
    assert metrics.entropy_bits(metrics.class_shares(torch.tensor([0, 1]))) == pytest.approx(1)


def test_traversal_rows_sweep_one_dimension_each():
    model, split = model_ignoring([]), random_split()

    images = render.traversals(model, split, dims=[2, 0], steps=5, span=3.0)

    assert images.shape == (10, 1, 28, 28)
    with torch.no_grad():
        z = model.encode(split.images[:1])[0]
        z[0, 0] = -3.0  # second row (dimension 0), first column (-span)
        expected = torch.sigmoid(model.decode(z)).reshape(1, 28, 28)
    assert torch.allclose(images[5], expected)
    assert not torch.equal(images[0], images[4])
