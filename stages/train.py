"""Stage train@<variant>: train one variant, record its curves, save the model, log it all to MLflow.

A checkpoint after every epoch lets a killed run resume where it stopped, in the same MLflow run,
as long as the params that shape training and the code are unchanged. A finished run is never
resumed: when DVC runs the stage again, it trains afresh.
"""

import math
import sys

import mlflow
import torch
from tqdm import tqdm

from vaelab import paths, served, tracking
from vaelab.data import load_split
from vaelab.errors import VaelabError, run_stage
from vaelab.models import VAE, check_fits_in_memory, save_trained
from vaelab.params import load_params, stage_variant
from vaelab.device import pick_device, rebalance_threads
from vaelab.train import Trainer, code_fingerprint, kl_weight, load_checkpoint, save_checkpoint


def main() -> None:
    params = load_params()
    name = stage_variant(params, sys.argv)
    variant = params.variant(name)
    device = pick_device()
    check_fits_in_memory(name, variant, device)
    train, test = load_split(True, device), load_split(False, device, binarize_seed=params.test_binarize_seed(name))
    if variant.train_images:
        if variant.train_images > len(train):
            raise VaelabError(
                f"variants.{name}.train_images is {variant.train_images}, more than the {len(train)} training images; lower it"
            )
        train = train.first(variant.train_images)
    if variant.batch_size > len(train):
        raise VaelabError(f"batch_size {variant.batch_size} is larger than the {len(train)} training images {name} trains on; lower it")
    final_kl_weight = kl_weight(variant.epochs - 1, variant.kl_warmup_epochs)
    if final_kl_weight < 1:
        print(
            f"{name}: warning: kl_warmup_epochs {variant.kl_warmup_epochs} does not end within its {variant.epochs} epochs; "
            f"its last epoch trains at KL weight {final_kl_weight:.2f}, so its results are not those of a finished "
            f"schedule (the report marks them); raise variants.{name}.epochs above {variant.kl_warmup_epochs}",
            file=sys.stderr,
        )
    torch.manual_seed(params.seed)
    model = VAE.for_variant(variant).to(device)
    if variant.output_bias_from_data:
        model.start_output_bias_at(train.images.mean(dim=0))
    trainer = Trainer(model, variant, params, train, test)

    fingerprint = {**params.run_params(name), "code": code_fingerprint()}
    checkpoint = load_checkpoint(paths.checkpoint_file(name))
    # DVC re-runs a finished stage only when asked to (`-f`) or when its code or data changed: train afresh
    if checkpoint and (checkpoint.get("completed") or checkpoint["fingerprint"] != fingerprint):
        tracking.close_abandoned_run(params, checkpoint["run_id"])
        checkpoint = None
    records = checkpoint["records"] if checkpoint else []
    if checkpoint:
        trainer.load_state_dict(checkpoint["trainer"])
        print(f"{name}: resuming after epoch {trainer.epoch} of {variant.epochs}", file=sys.stderr)

    note = f"Trained by DVC stage train@{name}; the stages evaluate, render, assess and report add their results to this run."
    with tracking.training_run(params, name, params.run_params(name), note, checkpoint and checkpoint["run_id"]) as run:
        if not checkpoint:
            tracking.log_mnist_inputs(len(train), len(test))
            if final_kl_weight < 1:
                mlflow.set_tag("warning", f"KL warm-up unfinished: the last epoch trained at KL weight {final_kl_weight:.2f}")
        tracking.log_epochs(run.info.run_id, records)
        steps = trainer.steps_per_epoch
        with tqdm(total=variant.epochs * steps, initial=trainer.epoch * steps, desc=name, unit="batch", mininterval=1) as bar:
            while trainer.epoch < variant.epochs:
                rebalance_threads()
                record = trainer.train_epoch(on_step=bar.update)
                if not math.isfinite(record["train_loss"]):
                    raise VaelabError(
                        f"{name}: the training loss became {record['train_loss']} in epoch {record['epoch']}; "
                        f"lower lr (now {params.lr})"
                    )
                records.append(record)
                save_checkpoint(paths.checkpoint_file(name), trainer, records, run.info.run_id, fingerprint)
                tracking.log_epochs(run.info.run_id, records)
                bar.write(
                    f"{name} epoch {record['epoch']}: train loss {record['train_loss']:.2f}, "
                    f"test ELBO {record['test_elbo']:.2f} nats"
                )

        paths.write_csv(paths.curves_file(name), records)
        summary = {"train_loss": records[-1]["train_loss"], "wall_seconds": sum(r["epoch_seconds"] for r in records)}
        paths.write_json(paths.train_metrics_file(name), summary)
        mlflow.log_metric("train_seconds", summary["wall_seconds"])
        save_trained(model, variant, paths.model_file(name))
        served.log_model(paths.model_file(name), name, test.first(1))
        tracking.tag_trained_model(name, run.info.run_id)
        save_checkpoint(paths.checkpoint_file(name), trainer, records, run.info.run_id, fingerprint, completed=True)


if __name__ == "__main__":
    run_stage(main)
