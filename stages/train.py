"""Stage train@<variant>: train one variant, record its curves, save the model, log it all to MLflow."""

import math
import sys

import mlflow
import torch
from tqdm import tqdm

from vaelab import paths
from vaelab.data import load_split
from vaelab.errors import VaelabError, run_stage
from vaelab.models import VAE, save_trained
from vaelab.params import load_params
from vaelab.tracking import training_run
from vaelab.train import Trainer, pick_device


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    variant = params.variant(name)
    device = pick_device()
    train, test = load_split(True, device), load_split(False, device)
    if params.batch_size > len(train):
        raise VaelabError(f"batch_size {params.batch_size} is larger than the {len(train)} training images; lower it")
    torch.manual_seed(params.seed)
    model = VAE.for_variant(variant, params.latent_dim).to(device)
    trainer = Trainer(model, variant, params, train, test)
    records = []
    with training_run(params, name) as run, tqdm(total=variant.epochs * trainer.steps_per_epoch, desc=name, unit="batch", mininterval=1) as bar:
        while trainer.epoch < variant.epochs:
            record = trainer.train_epoch(on_step=bar.update)
            if not math.isfinite(record["train_loss"]):
                raise VaelabError(
                    f"{name}: the training loss became {record['train_loss']} in epoch {record['epoch']}; lower lr (now {params.lr})"
                )
            records.append(record)
            paths.write_csv(paths.curves_file(name), records)
            mlflow.log_metrics({key: value for key, value in record.items() if key != "epoch"}, step=record["epoch"])
            bar.set_postfix(loss=f"{record['train_loss']:.2f}", test_elbo=f"{record['test_elbo']:.2f}")
        save_trained(model, variant, run.info.run_id, paths.model_file(name))
        summary = {"train_loss": records[-1]["train_loss"], "wall_seconds": sum(r["epoch_seconds"] for r in records)}
        paths.write_json(paths.train_metrics_file(name), summary)
        mlflow.log_metrics({"final_train_loss": summary["train_loss"], "train_wall_seconds": summary["wall_seconds"]})
        model.cpu()
        mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=model.example_input().numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )


if __name__ == "__main__":
    run_stage(main)
