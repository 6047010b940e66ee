"""The math of the objective, checked against independent computations."""

import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.elbo import bernoulli_nll, elbo_terms, elbo_terms_given_noise, gaussian_kl
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


def test_the_grey_level_elbo_is_the_mean_elbo_of_binarised_copies_with_the_same_z():
    """BCE is linear in its target, so BCE(x, l) = E_{b ~ Bern(x)}[-log Bern(b | l)]: with the encoder
    fed the grey image and the same z, the ELBO vaelab reports equals the average, over random
    binarisations b = 1[u <= x], of the binarised ELBO (a bound on the binarised-MNIST likelihood)."""
    generator = torch.Generator().manual_seed(3)
    model = VAE(latent_dim=4, hidden=[16]).double()
    x = torch.rand(3, 784, generator=generator, dtype=torch.float64)
    noise = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        grey_rec, kl = elbo_terms_given_noise(model, x, None, noise)
        mu, logvar = model.encode(x)
        logits = model.decode(mu + noise * (0.5 * logvar).exp())

        n = 20_000
        binarised = (torch.rand(n, *x.shape, generator=generator, dtype=torch.float64) <= x).double()
        binary_rec = F.binary_cross_entropy_with_logits(logits.expand(n, -1, -1), binarised, reduction="none").sum(dim=2)

    mean, standard_error = binary_rec.mean(dim=0), binary_rec.std(dim=0) / math.sqrt(n)
    assert torch.all((mean - grey_rec).abs() < 4 * standard_error), (mean, grey_rec, standard_error)
    assert torch.all(standard_error < 0.2)  # sharp enough to see a fifth of a nat
    # exactly, not only on average: the expectation over b, pixel by pixel, is the grey BCE
    expected = (x * F.binary_cross_entropy_with_logits(logits, torch.ones_like(x), reduction="none")
                + (1 - x) * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(x), reduction="none")).sum(dim=1)
    assert torch.allclose(expected, grey_rec)
    assert torch.equal(kl, gaussian_kl(mu, logvar))  # the KL term is the same: q sees the grey image
