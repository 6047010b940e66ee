"""Shapes and conditioning of every variant in params.yaml."""

import pytest
import torch

from vaelab.models import VAE
from vaelab.params import load_params
from tests.conftest import PROJECT

PARAMS = load_params(PROJECT / "params.yaml")
VARIANTS = list(PARAMS.variants)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_maps_images_to_latents_and_back(name):
    variant = PARAMS.variant(name)
    model = VAE.for_variant(variant)
    x = torch.rand(5, 784)
    onehot = torch.eye(10)[:5] if variant.conditional else None

    mu, logvar = model.encode(x, onehot)
    logits = model.decode(mu, onehot)

    assert mu.shape == logvar.shape == (5, variant.latent_dim)
    assert logits.shape == (5, 784)
    widths = [layer.out_features for layer in model.encoder if isinstance(layer, torch.nn.Linear)]
    assert widths == [*variant.hidden, 2 * variant.latent_dim]


def test_the_cvae_sees_the_label_in_encoder_and_decoder():
    model = VAE.for_variant(PARAMS.variant("cvae"))
    x, z = torch.rand(1, 784), torch.zeros(1, PARAMS.latent_dim)
    as_three, as_eight = torch.eye(10)[[3]], torch.eye(10)[[8]]

    assert model.encoder[0].in_features == 784 + 10
    assert model.decoder[0].in_features == PARAMS.latent_dim + 10
    assert not torch.allclose(model.encode(x, as_three)[0], model.encode(x, as_eight)[0])
    assert not torch.allclose(model.decode(z, as_three), model.decode(z, as_eight))
    with pytest.raises(ValueError, match="one-hot label"):
        model.encode(x)


def test_unconditional_variants_take_no_label():
    model = VAE.for_variant(PARAMS.variant("vae"))
    assert model.encoder[0].in_features == 784
    assert model.decoder[0].in_features == PARAMS.latent_dim
