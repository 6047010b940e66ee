"""params.yaml is checked before any work; a mistake gets one line naming the key and what is allowed."""

import pytest
import yaml

from vaelab.errors import VaelabError
from vaelab.params import load_params
from tests.conftest import PROJECT

DEFAULTS = yaml.safe_load((PROJECT / "params.yaml").read_text())


def load_with(tmp_path, change):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_params(path)


def test_the_shipped_params_are_valid_and_hold_the_reference_settings():
    params = load_params(PROJECT / "params.yaml")
    assert (params.latent_dim, params.batch_size, params.lr) == (20, 128, 1e-3)
    assert {name: params.variant(name).epochs for name in params.pipeline} == {
        "vae": 15, "vae_deep": 20, "cvae": 100, "vae_anneal": 30
    }
    assert params.variant("vae_anneal").kl_warmup_epochs == 10
    assert params.variant("vae_anneal").lr_schedule == "cosine"
    assert params.variant("vae").latent_dim == 20 and params.variant("vae").batch_size == 128


def test_burda_vae_holds_the_papers_settings_off_the_default_pipeline():
    burda = load_params(PROJECT / "params.yaml").variant("burda_vae")
    assert (burda.hidden, burda.latent_dim, burda.activation, burda.batch_size) == ([200, 200], 50, "tanh", 20)
    assert (burda.lr_schedule, burda.epochs, burda.adam_eps, burda.train_images) == ("staged", 3280, 1e-4, 59_600)
    assert burda.binarize and burda.output_bias_from_data
    assert "burda_vae" not in load_params(PROJECT / "params.yaml").pipeline


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(latnet_dim=3), "unknown key 'latnet_dim' (did you mean 'latent_dim'?); allowed here: seed, latent_dim,"),
        (lambda p: p["variants"]["cvae"].update(hiden=[8]), "unknown key 'variants.cvae.hiden' (did you mean 'hidden'?); allowed here: epochs, hidden,"),
        (lambda p: p["variants"].update({"Big-VAE": p["variants"]["vae"]}), "variants: 'Big-VAE' cannot name a variant: use lowercase letters"),
        (lambda p: p.update(variants={}), "variants: dictionary should have at least 1 item"),
        (lambda p: p.update(latent_dim=0), "latent_dim: input should be greater than 0 (got 0)"),
        (lambda p: p.update(latent_dim=-3), "latent_dim: input should be greater than 0 (got -3)"),
        (lambda p: p.update(latent_dim="twenty"), "latent_dim: input should be a valid integer (got 'twenty')"),
        (lambda p: p.update(lr=0.0), "lr: input should be greater than 0 (got 0.0)"),
        (lambda p: p.update(lr=-1), "lr: input should be greater than 0 (got -1.0)"),
        (lambda p: p["variants"]["cvae"].update(epochs=0), "variants.cvae.epochs: input should be greater than 0 (got 0)"),
        (lambda p: p["variants"]["vae"].update(lr_schedule="linear"), "variants.vae.lr_schedule: input should be 'constant', 'cosine' or 'staged'"),
        (lambda p: p.update(pipeline=["vae", "vea"]), "pipeline: 'vea' is not under variants ("),
        (lambda p: p.update(pipeline=["vae", "vae"]), "pipeline: a variant is named twice"),
        (lambda p: p["variants"]["vae"].update(activation="gelu"), "variants.vae.activation: input should be 'relu' or 'tanh'"),
        (lambda p: p.pop("batch_size"), "missing key 'batch_size'"),
    ],
)
def test_a_bad_param_is_named_in_one_line(tmp_path, change, message):
    with pytest.raises(VaelabError) as error:
        load_with(tmp_path, change)
    text = str(error.value)
    assert message in text
    assert "\n" not in text


def test_a_misspelt_variant_name_lists_the_variants():
    params = load_params(PROJECT / "params.yaml")
    with pytest.raises(VaelabError, match="unknown variant 'cvea'; params.yaml has: vae, vae_deep, cvae, vae_anneal"):
        params.variant("cvea")
