"""The training loop's schedules and that it learns, on tiny in-memory data."""

import math

import pytest
import torch

from vaelab.data import Split
from vaelab.models import VAE
from vaelab.params import Params
from vaelab.train import Trainer, kl_weight


def test_kl_weight_warms_up_linearly_then_stays_at_one():
    assert [kl_weight(epoch, 4) for epoch in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


def tiny_trainer(epochs: int, warmup: int, schedule: str) -> Trainer:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    images = (torch.rand(10, 784, generator=generator) > 0.7).float()[labels] * 0.9
    split = Split(images, labels)
    params = Params.model_validate(
        {
            "latent_dim": 2,
            "batch_size": 32,
            "lr": 0.01,
            "variants": {
                name: {"epochs": epochs, "hidden": [16], "kl_warmup_epochs": warmup, "lr_schedule": schedule}
                for name in ["vae", "vae_deep", "cvae", "vae_anneal"]
            },
        }
    )
    variant = params.variant("vae_anneal")
    torch.manual_seed(0)
    return Trainer(VAE.for_variant(variant, 2), variant, params, split, split)


def test_an_epoch_record_reports_the_schedule_in_force_and_the_loss_falls():
    trainer = tiny_trainer(epochs=6, warmup=3, schedule="cosine")
    records = [trainer.train_epoch() for _ in range(6)]

    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["kl_weight"] for r in records] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    expected_lr = [0.01 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)]
    assert [r["lr"] for r in records] == pytest.approx(expected_lr)
    for r in records:
        assert r["train_loss"] == pytest.approx(r["train_rec"] + r["kl_weight"] * r["train_kl"])
        assert r["test_elbo"] == pytest.approx(-(r["test_rec"] + r["test_kl"]))
    assert records[-1]["test_elbo"] > records[0]["test_elbo"]


def test_a_constant_schedule_keeps_the_learning_rate():
    trainer = tiny_trainer(epochs=3, warmup=0, schedule="constant")
    assert [trainer.train_epoch()["lr"] for _ in range(3)] == [0.01] * 3
