"""The training loop's schedules, that it learns, and that it resumes bit for bit, on tiny in-memory data."""

import math

import pytest
import torch

from vaelab.data import Split
from vaelab.models import VAE
from vaelab.params import Params
from vaelab.train import Trainer, kl_weight, load_checkpoint, save_checkpoint, staged_lr_factor


def test_kl_weight_warms_up_linearly_then_stays_at_one():
    assert [kl_weight(epoch, 4) for epoch in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


def tiny_trainer(
    epochs: int, warmup: int, schedule: str, device=torch.device("cpu"), binarize: bool = False, seed: int = 0, **options
) -> Trainer:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    images = (torch.rand(10, 784, generator=generator) > 0.7).float()[labels] * 0.9
    split = Split(images.to(device), labels.to(device))
    params = Params.model_validate(
        {
            "seed": seed,
            "latent_dim": 2,
            "batch_size": 32,  # 200 images: 6 batches of 32 and one of 8, two batch sizes to capture on CUDA
            "lr": 0.01,
            "variants": {
                name: {"epochs": epochs, "hidden": [16], "kl_warmup_epochs": warmup, "lr_schedule": schedule, "binarize": binarize}
                for name in ["vae", "vae_deep", "cvae", "vae_anneal"]
            },
        }
    )
    variant = params.variant("vae_anneal")
    torch.manual_seed(0)
    return Trainer(VAE.for_variant(variant).to(device), variant, params, split, split, **options)


def without_time(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "epoch_seconds"} for record in records]


def test_an_epoch_record_reports_the_schedule_in_force_and_the_loss_falls(device):
    trainer = tiny_trainer(epochs=6, warmup=3, schedule="cosine", device=device)
    records = [trainer.train_epoch() for _ in range(6)]

    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["kl_weight"] for r in records] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    expected_lr = [0.01 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)]
    assert [r["lr"] for r in records] == pytest.approx(expected_lr)
    for r in records:
        assert r["train_loss"] == pytest.approx(r["train_rec"] + r["kl_weight"] * r["train_kl"])
        assert r["test_elbo"] == pytest.approx(-(r["test_rec"] + r["test_kl"]))
    assert records[-1]["test_elbo"] > records[0]["test_elbo"]


def test_a_constant_schedule_keeps_the_learning_rate(device):
    trainer = tiny_trainer(epochs=3, warmup=0, schedule="constant", device=device)
    # on CUDA the rate lives in a float32 tensor on the device, where the CUDA graphs read it
    assert [trainer.train_epoch()["lr"] for _ in range(3)] == pytest.approx([0.01] * 3, rel=1e-7)


@pytest.mark.parametrize("schedule, binarize", [("cosine", False), ("staged", True)])
def test_a_run_resumed_from_its_checkpoint_equals_the_uninterrupted_one(schedule, binarize, device, tmp_path):
    """Also for burda_vae's staged rates and binarisation draws, which the checkpoint must carry on."""
    uninterrupted = tiny_trainer(epochs=4, warmup=2, schedule=schedule, device=device, binarize=binarize)
    expected = without_time([uninterrupted.train_epoch() for _ in range(4)])

    first = tiny_trainer(epochs=4, warmup=2, schedule=schedule, device=device, binarize=binarize)
    records = [first.train_epoch() for _ in range(2)]
    save_checkpoint(tmp_path / "checkpoint.pt", first, records, "run", {})
    resumed = tiny_trainer(epochs=4, warmup=2, schedule=schedule, device=device, binarize=binarize)
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["trainer"])
    records += [resumed.train_epoch() for _ in range(2)]

    assert without_time(records) == expected
    for name, weight in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weight), name


@pytest.mark.parametrize("schedule, binarize", [("cosine", False), ("staged", True)])
def test_the_cuda_graphs_replay_the_eager_steps(schedule, binarize, device):
    """Also with the binarisation's uniforms drawn inside the captured step (burda_vae's step)."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device (bench/gpu_check.sh runs this on one)")
    records = {}
    for graphs in (False, True):
        trainer = tiny_trainer(
            epochs=3, warmup=2, schedule=schedule, device=device, binarize=binarize, cuda_graphs=graphs, compiled=False
        )
        records[graphs] = without_time([trainer.train_epoch() for _ in range(3)])
    assert trainer.graphs.keys() == {32, 8}  # both batch sizes were captured and replayed
    for eager, graphed in zip(records[False], records[True]):
        assert graphed == pytest.approx(eager, rel=1e-5)


def test_the_compiled_step_computes_the_eager_one(device):
    """What the train stage runs on a GPU, the step compiled (and on CUDA replayed from graphs),
    against eager steps: the same random numbers and math, so the same records up to rounding."""
    eager = tiny_trainer(epochs=3, warmup=2, schedule="cosine", device=device, cuda_graphs=False, compiled=False)
    # the train stage's defaults on CUDA; the CPU's default is eager, so compiling is asked for there
    compiled = tiny_trainer(epochs=3, warmup=2, schedule="cosine", device=device, **({} if device.type == "cuda" else {"compiled": True}))
    assert compiled.compiled and compiled.cuda_graphs == (device.type == "cuda")
    for expected, record in zip([eager.train_epoch() for _ in range(3)], [compiled.train_epoch() for _ in range(3)]):
        assert without_time([record])[0] == pytest.approx(without_time([expected])[0], rel=1e-4)


def test_the_staged_schedule_runs_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7():
    factors = [staged_lr_factor(epoch) for epoch in range(3280)]
    stages = [factors.count(10 ** (-i / 7)) for i in range(8)]
    assert stages == [1, 3, 9, 27, 81, 243, 729, 2187] and sum(stages) == 3280
    assert factors == sorted(factors, reverse=True)
    assert staged_lr_factor(5000) == 10 ** (-7 / 7)  # after the last stage, its rate


def test_a_staged_run_records_the_rate_of_each_epoch(device):
    trainer = tiny_trainer(epochs=5, warmup=0, schedule="staged", device=device)
    expected = [0.01 * 10 ** (-stage / 7) for stage in (0, 1, 1, 1, 2)]
    assert [trainer.train_epoch()["lr"] for _ in range(5)] == pytest.approx(expected, rel=1e-6)


def encoder_inputs(trainer: Trainer, epochs: int) -> list[torch.Tensor]:
    """What the encoder saw in each step of the given epochs."""
    seen = []
    handle = trainer.model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    for _ in range(epochs):
        trainer.train_steps(1.0)
    handle.remove()
    return seen


def test_dynamic_binarisation_draws_new_binary_pixels_for_every_batch_from_the_seed():
    """With binarize, every step's batch is b ~ Bernoulli(x) drawn anew from the run's generator:
    the encoder sees 0s and 1s, a different b for an image each epoch, the same ones for a seed."""
    def trainer(seed: int) -> Trainer:
        made = tiny_trainer(epochs=2, warmup=0, schedule="constant", binarize=True, seed=seed)
        made.train_split = Split(torch.full_like(made.train_split.images, 0.5), made.train_split.labels)
        return made

    first, again, other = (encoder_inputs(trainer(seed), epochs=2) for seed in (0, 0, 1))
    steps = len(first) // 2

    assert all(set(batch.unique().tolist()) == {0.0, 1.0} for batch in first)
    assert torch.cat(first).mean().item() == pytest.approx(0.5, abs=0.01)  # P(b = 1) = x = 0.5
    assert not torch.equal(first[0], first[steps])  # epoch 2 draws afresh (and shuffles)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_a_grey_run_feeds_the_grey_pixels():
    seen = encoder_inputs(tiny_trainer(epochs=1, warmup=0, schedule="constant"), epochs=1)
    assert any(not set(batch.unique().tolist()) <= {0.0, 1.0} for batch in seen)


def test_the_output_bias_starts_at_the_logit_of_the_mean_pixel_and_tanh_is_used_where_asked():
    model = VAE(latent_dim=2, hidden=[8, 8], activation="tanh")
    mean = torch.linspace(0, 1, 784)
    model.start_output_bias_at(mean)

    assert torch.allclose(torch.sigmoid(model.output_layer.bias), mean.clamp(0.001, 0.999), atol=1e-6)
    assert {type(layer).__name__ for layer in [*model.encoder, *model.decoder]} == {"Linear", "Tanh"}
