"""Latent usage and judged samples: active units, KL per dimension, mutual information, class shares and their entropy; the grey entropy floor."""

import math

import pytest
import torch

from torch.distributions import Normal

from vaelab import metrics, render
from vaelab.elbo import bernoulli_nll
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


def encoder_emitting(latent_dim: int, mu_per_image: torch.Tensor | None, logvar: float) -> VAE:
    """A VAE whose q(z|x) is N(mu, exp(logvar)): mu = 0 for every image, or mu read off the image's first pixels."""
    model = VAE(latent_dim=latent_dim, hidden=[4]).double()
    with torch.no_grad():
        model.encoder[0].weight.zero_()
        model.encoder[0].bias.zero_()
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias[:latent_dim] = 0.0
        model.encoder[-1].bias[latent_dim:] = logvar
        if mu_per_image is not None:  # the first layer copies pixels 0..latent_dim-1, ReLU passes them, the head emits them as mu
            model.encoder[0].weight[:latent_dim, :latent_dim] = torch.eye(latent_dim)
            model.encoder[-1].weight[:latent_dim, :latent_dim] = torch.eye(latent_dim)
    return model


def test_mutual_information_is_zero_for_a_collapsed_posterior_and_log_n_for_distinct_ones():
    n, latent_dim = 400, 3
    images = torch.zeros(n, 784, dtype=torch.float64)
    images[:, :latent_dim] = torch.rand(n, latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    split = Split(images, torch.zeros(n, dtype=torch.long))

    collapsed = metrics.mutual_information(encoder_emitting(latent_dim, None, 0.0), split, 100, torch.Generator().manual_seed(0))
    distinct = metrics.mutual_information(encoder_emitting(latent_dim, images, -12.0), split, 100, torch.Generator().manual_seed(0))

    # q(z|x) = p(z) for every x: nothing about x in z
    assert collapsed == pytest.approx(0, abs=1e-9)
    # posteriors far narrower than their distances apart: each z points at its own image, I = log n
    assert distinct == pytest.approx(math.log(n), abs=1e-6)


def test_mutual_information_matches_its_definition_term_by_term():
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=[6]).double()
    split = Split(torch.rand(30, 784, dtype=torch.float64), torch.zeros(30, dtype=torch.long))
    estimate = metrics.mutual_information(model, split, 7, torch.Generator().manual_seed(4))

    with torch.no_grad():
        mu, logvar = model.encode(split.images)
    posteriors = Normal(mu, (0.5 * logvar).exp())
    z = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(4)).double() * posteriors.scale
    log_q_own = posteriors.log_prob(z).sum(dim=1)
    log_q_all = Normal(mu.unsqueeze(0), posteriors.scale.unsqueeze(0)).log_prob(z.unsqueeze(1)).sum(dim=2)  # (i, j)
    log_aggregate = torch.logsumexp(log_q_all, dim=1) - math.log(30)
    assert estimate == pytest.approx(float((log_q_own - log_aggregate).mean()), abs=1e-9)


def test_the_grey_entropy_floor_is_the_pixels_own_entropy_and_bounds_any_reconstruction():
    half = Split(torch.full((3, 784), 0.5, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    binary = Split((torch.rand(3, 784, dtype=torch.float64) > 0.5).double(), torch.zeros(3, dtype=torch.long))
    grey = Split(torch.rand(50, 784, dtype=torch.float64), torch.zeros(50, dtype=torch.long))

    assert metrics.binary_entropy_floor(half) == pytest.approx(784 * math.log(2))
    assert metrics.binary_entropy_floor(binary) == 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        for logits in (torch.randn(50, 784, dtype=torch.float64), torch.logit(grey.images)):  # any decoder; the best one
            assert float(bernoulli_nll(logits, grey.images).mean()) >= metrics.binary_entropy_floor(grey) - 1e-9
    assert float(bernoulli_nll(torch.logit(grey.images), grey.images).mean()) == pytest.approx(metrics.binary_entropy_floor(grey))
