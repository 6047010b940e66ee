"""The math of the objective, checked against independent computations."""

import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.elbo import bernoulli_nll, elbo_terms, gaussian_kl
from vaelab.models import VAE


def test_gaussian_kl_matches_torch_distributions_and_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    q, prior = Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))

    analytic = gaussian_kl(mu, logvar)

    assert torch.allclose(analytic, kl_divergence(q, prior).sum(dim=1))
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - prior.log_prob(z)).sum(dim=2).mean(dim=0)
    assert torch.allclose(analytic, monte_carlo, atol=0.03), (analytic, monte_carlo)


def test_gaussian_kl_is_zero_exactly_at_the_prior():
    assert torch.equal(gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))


def test_bernoulli_nll_from_logits_equals_bce_on_sigmoid_outputs():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 784, generator=generator, dtype=torch.float64) * 4
    pixels = torch.rand(6, 784, generator=generator, dtype=torch.float64)

    expected = F.binary_cross_entropy(torch.sigmoid(logits), pixels, reduction="none").sum(dim=1)

    assert torch.allclose(bernoulli_nll(logits, pixels), expected)


def test_bernoulli_nll_is_the_negative_log_likelihood_of_binary_pixels():
    logits = torch.tensor([[0.0, 2.0]])
    pixels = torch.tensor([[1.0, 0.0]])
    expected = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0))))
    assert math.isclose(bernoulli_nll(logits, pixels).item(), expected, rel_tol=1e-6)


def test_elbo_terms_are_per_image_and_repeatable_with_a_generator(device):
    model = VAE(latent_dim=3, hidden=[16]).to(device)
    x = torch.rand(4, 784, device=device)

    first = elbo_terms(model, x, generator=torch.Generator(device).manual_seed(7))
    second = elbo_terms(model, x, generator=torch.Generator(device).manual_seed(7))

    assert first[0].shape == first[1].shape == (4,)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert (first[0] > 0).all() and (first[1] >= 0).all()
