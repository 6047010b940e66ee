"""The importance-weighted bound: equal to a brute-force computation, and ordered as the theory says."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vaelab.data import Split, fetch_mnist, load_split
from vaelab.elbo import bernoulli_log_likelihood, bernoulli_nll, elbo_terms, iwae_bound
from vaelab import metrics
from vaelab.models import VAE


def brute_force_bound(model: VAE, x: torch.Tensor, noise: torch.Tensor, target: torch.Tensor | None = None) -> list[float]:
    """log (1/k) sum_i p(target, z_i) / q(z_i|x) per image, term by term with torch.distributions and
    math; target is x unless given."""
    target = x if target is None else target
    mu, logvar = model.encode(x)
    q = Normal(mu, (0.5 * logvar).exp())
    bounds = []
    for image in range(len(x)):
        log_weights = []
        for sample in noise[:, image]:
            z = mu[image] + sample * q.scale[image]
            log_px = Bernoulli(logits=model.decode(z.unsqueeze(0))[0]).log_prob(target[image]).sum()
            log_pz = Normal(0.0, 1.0).log_prob(z).sum()
            log_qz = Normal(mu[image], q.scale[image]).log_prob(z).sum()
            log_weights.append(float(log_px + log_pz - log_qz))
        top = max(log_weights)
        bounds.append(top + math.log(math.fsum(math.exp(w - top) for w in log_weights) / len(log_weights)))
    return bounds


@pytest.mark.parametrize("one_sample_per_chunk", [False, True])
def test_iwae_bound_equals_brute_force_on_a_tiny_model(one_sample_per_chunk, device):
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=[5]).double().to(device)
    x = (torch.rand(3, 784, dtype=torch.float64) > 0.5).double().to(device)
    k, seed = 6, 11
    max_elements = x.numel() if one_sample_per_chunk else None  # None: the device's default chunks
    generator = torch.Generator(device).manual_seed(seed)
    shape, options = (1 if one_sample_per_chunk else k, 3, 2), {"dtype": torch.float64, "device": device}
    noise = torch.cat([torch.randn(shape, generator=generator, **options) for _ in range(k // shape[0])])

    with torch.no_grad():
        bound = iwae_bound(model, x, None, k, torch.Generator(device).manual_seed(seed), max_elements)
        expected = brute_force_bound(model, x, noise)

    assert bound.dtype == torch.float64 and bound.shape == (3,)
    assert bound.tolist() == pytest.approx(expected, abs=1e-9)


def test_iwae_bound_of_a_conditional_model_uses_the_label(device):
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=[5], n_classes=10).to(device)
    x = torch.rand(4, 784, device=device)
    onehots = torch.eye(10, device=device)[[1, 2, 3, 4]], torch.eye(10, device=device)[[5, 6, 7, 8]]
    with torch.no_grad():
        first, second = (iwae_bound(model, x, onehot, 5, torch.Generator(device).manual_seed(0)) for onehot in onehots)
    assert not torch.allclose(first, second)


@pytest.fixture(scope="module")
def trained(mirror, tmp_path_factory):
    """A VAE trained briefly on the generated MNIST, and its test split."""
    directory, md5 = mirror
    root = tmp_path_factory.mktemp("data")
    fetch_mnist(root, str(directory), md5)
    device = torch.device("cpu")
    train, test = load_split(True, device, root), load_split(False, device, root)
    torch.manual_seed(0)
    model = VAE(latent_dim=4, hidden=[64])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        for batch in torch.randperm(len(train), generator=generator).split(64):
            rec, kl = elbo_terms(model, train.images[batch], generator=generator)
            optimizer.zero_grad()
            (rec + kl).sum().backward()
            optimizer.step()
    return model.eval(), test


def test_elbo_is_iwae_with_one_sample_and_the_bound_rises_with_k(trained):
    model, test = trained
    seeds = range(3)

    def mean_over_seeds(figure) -> float:
        return sum(figure(seed) for seed in seeds) / len(seeds)

    elbo = mean_over_seeds(lambda seed: metrics.test_elbo(model, test, batch_size=50, seed=seed)["elbo"])
    iwae = {k: mean_over_seeds(lambda seed: metrics.test_iwae(model, test, k, batch_size=50, seed=seed)) for k in (1, 10, 1000)}

    # k = 1 draws the same posterior samples as the ELBO and differs only in estimating the KL term
    # by Monte Carlo instead of in closed form: ~0.1 nats apart on average over these 100 images
    assert iwae[1] == pytest.approx(elbo, abs=0.3)
    # measured on this model: the ELBO -343.6, k=10 -343.2, k=1000 -343.09, each within ~0.05 between seeds
    assert elbo + 0.2 < iwae[10] < iwae[1000]


def test_log_likelihood_of_many_samples_equals_the_training_loss_even_where_exp_overflows(device):
    torch.manual_seed(0)
    model = VAE(latent_dim=3, hidden=[7], n_classes=10).to(device)
    x, onehot = torch.rand(4, 784, device=device), torch.eye(10, device=device)[[0, 3, 5, 9]]
    z = torch.randn(5, 4, 3, device=device)
    with torch.no_grad():
        model.output_layer.bias[:3] = 200.0  # exp(200) overflows float32: those rows take the stable path
        fast = bernoulli_log_likelihood(model, x, onehot)(z)
        exact = torch.stack([-bernoulli_nll(model.decode(sample, onehot).double(), x.double()) for sample in z])
    assert torch.isfinite(fast).all()
    assert fast.double().flatten().tolist() == pytest.approx(exact.flatten().tolist(), abs=2e-3)


def test_the_binarised_bound_with_the_grey_proposal_equals_brute_force(device):
    """log p(b) bounded with z drawn from q(z|x) of the grey image x that b was drawn from."""
    torch.manual_seed(0)
    model = VAE(latent_dim=2, hidden=[5]).double().to(device)
    grey = Split(torch.rand(3, 784, dtype=torch.float64, device=device), torch.arange(3, device=device))
    binary = grey.binarized(seed=5).images
    k, seed = 6, 11
    noise = torch.randn((k, 3, 2), generator=torch.Generator(device).manual_seed(seed), dtype=torch.float64, device=device)

    with torch.no_grad():
        bound = iwae_bound(model, grey.images, None, k, torch.Generator(device).manual_seed(seed), target=binary)
        expected = brute_force_bound(model, grey.images, noise, target=binary)
        of_grey = iwae_bound(model, grey.images, None, k, torch.Generator(device).manual_seed(seed))

    assert bound.tolist() == pytest.approx(expected, abs=1e-9)
    assert not torch.allclose(bound, of_grey)


def test_binarising_follows_the_seed_and_draws_each_pixel_with_its_grey_level():
    grey = Split(torch.linspace(0, 1, 784).repeat(2000, 1), torch.zeros(2000, dtype=torch.long))
    binary = grey.binarized(seed=3).images

    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binary, grey.binarized(seed=3).images)
    assert not torch.equal(binary, grey.binarized(seed=4).images)
    assert (binary[:, 0] == 0).all() and (binary[:, -1] == 1).all()  # black stays black, white stays white
    # each pixel's share of ones over 2000 draws is its grey level, within 4 standard errors
    share, level = binary.mean(dim=0), grey.images[0]
    assert ((share - level).abs() <= 4 * (level * (1 - level) / 2000).sqrt() + 1e-6).all()


def log_marginal_by_quadrature(model: VAE, target: torch.Tensor) -> list[float]:
    """log p(b) = log integral p(b|z) N(z; 0, 1) dz for a one-dimensional z, on a fine grid."""
    grid = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    log_prior = Normal(0.0, 1.0).log_prob(grid)
    log_likelihood = -torch.stack([bernoulli_nll(model.decode(grid.unsqueeze(1)), b.expand(len(grid), -1)) for b in target])
    return (torch.logsumexp(log_likelihood + log_prior, dim=1) + math.log(grid[1] - grid[0])).tolist()


def test_the_binarised_bound_rises_with_k_towards_the_exact_log_likelihood():
    torch.manual_seed(0)
    model = VAE(latent_dim=1, hidden=[8]).double()
    grey = Split(torch.rand(60, 784, dtype=torch.float64) * 0.6 + 0.2 * (torch.rand(60, 1, dtype=torch.float64) > 0.5), torch.zeros(60, dtype=torch.long))
    binary = grey.binarized(seed=0)

    with torch.no_grad():
        exact = torch.tensor(log_marginal_by_quadrature(model, binary.images), dtype=torch.float64)
        bounds = {k: metrics.test_iwae(model, grey, k, batch_size=100, seed=1, targets=binary) for k in (1, 10, 1000)}

    # ELBO (k = 1) <= IWAE_10 <= IWAE_1000 <= log p(b), the means over 60 images
    assert bounds[1] < bounds[10] < bounds[1000] <= float(exact.mean())
    # most of the ELBO's gap to log p(b) closes by k = 1000
    assert float(exact.mean()) - bounds[1000] < 0.1 * (float(exact.mean()) - bounds[1])
