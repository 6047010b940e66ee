"""The objective: the ELBO of a Bernoulli-likelihood VAE with a standard normal prior, in nats.

-ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), estimated with one reparameterised sample.
Everything here is per image (summed over pixels and latent dimensions); callers sum or average.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vaelab.models import VAE

# logits decoded at once by iwae_bound. On the CPU, 8 MiB of float32, which the elementwise passes
# over them find in the cores' caches (4 MiB of L2 each here); 2**23 took ~1.4x longer on this CPU.
# A GPU needs large chunks to fill its cores and hide each launch: 1 GiB.
IWAE_CHUNK_ELEMENTS = {"cpu": 2**21, "cuda": 2**28}


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in closed form."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per row: binary cross-entropy summed over pixels, from logits for stability."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)


def posterior_noise(model: VAE, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The standard normal draws that reparameterise one sample z ~ q(z|x) for each of like's images,
    on like's device, as floats of the model's weights."""
    dtype = model.output_layer.weight.dtype
    return torch.randn((len(like), model.latent_dim), generator=generator, device=like.device, dtype=dtype)


def elbo_terms(
    model: VAE, x: torch.Tensor, onehot: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction term -log p(x|z) and KL term per image; -ELBO is their sum."""
    return elbo_terms_given_noise(model, x, onehot, posterior_noise(model, x, generator))


def elbo_terms_given_noise(
    model: VAE, x: torch.Tensor, onehot: torch.Tensor | None, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """elbo_terms with z = mu + noise * sigma: a pure function of its inputs, which torch.compile
    can fuse whole (a draw from an explicit generator inside would split it)."""
    mu, logvar = model.encode(x, onehot)
    z = mu + noise * (0.5 * logvar).exp()
    return bernoulli_nll(model.decode(z, onehot), x), gaussian_kl(mu, logvar)


def iwae_bound(
    model: VAE,
    x: torch.Tensor,
    onehot: torch.Tensor | None,
    k: int,
    generator: torch.Generator | None,
    max_elements: int | None = None,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """The importance-weighted bound of Burda et al. (2015) on log p(x) per image, in nats (float64).

    log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), with z_1..z_k drawn from q(z|x).
    k = 1 is the ELBO; the bound does not decrease with k. The k samples go through the decoder
    in chunks of at most max_elements logits, and the log-sum-exp runs over the chunks, so memory
    stays bounded whatever k is.

    target: the pixels whose likelihood is bounded, when they are not x: binary pixels b drawn from
    the grey image x, bounded with the proposal q(z|x). Any proposal gives a valid bound on log p(b);
    one fitted to b would give a tighter one.
    """
    mu, logvar = model.encode(x, onehot)
    std = (0.5 * logvar).exp()
    max_elements = max_elements or IWAE_CHUNK_ELEMENTS[x.device.type]
    per_chunk = max(1, max_elements // (len(x) * x.shape[1]))
    log_likelihood = bernoulli_log_likelihood(model, x if target is None else target, onehot)
    total = torch.full((len(x),), -torch.inf, dtype=torch.float64, device=x.device)
    for start in range(0, k, per_chunk):
        n = min(per_chunk, k - start)
        noise = torch.randn((n, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise * std  # (n, images, latent_dim)
        # log p(z) - log q(z|x) for diagonal Gaussians: the log(2 pi) terms cancel
        log_prior_ratio = 0.5 * (noise.square() + logvar - z.square()).sum(dim=2)
        log_weights = log_prior_ratio + log_likelihood(z)
        total = torch.logaddexp(total, torch.logsumexp(log_weights.double(), dim=0))
    return total - math.log(k)


def bernoulli_log_likelihood(
    model: VAE, x: torch.Tensor, onehot: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(x|z) for many samples of each image: a function of z (n, images, latent_dim) -> (n, images).

    Equals -bernoulli_nll, written for speed: the IWAE decodes k samples per image, and beyond the
    decoder's own matrix products its time goes here. log p(x|z) = sum_j x_j l_j - softplus(l_j) for
    the logits l = h W^T + b. The first sum goes through the last layer as h . (W^T x) + b . x, with
    W^T x computed once per image instead of a product per logit. softplus is log(1 + exp(l)), in
    place: the library's softplus goes through log1p, several times slower per element on this CPU,
    and losing exp(l) below float32's resolution next to 1 costs < 1e-4 nats per image. Rows where
    exp(l) overflows are redone with the stable softplus.
    """
    head = model.output_layer
    x_weight, x_bias = x @ head.weight, x @ head.bias

    def log_likelihood(z: torch.Tensor) -> torch.Tensor:
        n = len(z)
        hidden = model.decode_hidden(z.flatten(0, 1), None if onehot is None else onehot.repeat(n, 1)).view(n, len(x), -1)
        x_dot_logits = torch.einsum("nih,ih->ni", hidden, x_weight) + x_bias
        softplus_sum = F.linear(hidden, head.weight, head.bias).exp_().add_(1).log_().sum(dim=2)
        overflowed = softplus_sum.isinf()
        if overflowed.any():
            softplus_sum[overflowed] = F.softplus(F.linear(hidden[overflowed], head.weight, head.bias)).sum(dim=1)
        return x_dot_logits - softplus_sum

    return log_likelihood
