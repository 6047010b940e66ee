"""Stage judge: train the digit classifier that reads the VAEs' samples, and report its test accuracy."""

import mlflow
import torch
from tqdm import tqdm

from vaelab import paths
from vaelab.data import load_split
from vaelab.errors import VaelabError, run_stage
from vaelab.judge import Judge, accuracy, save_judge, train_judge
from vaelab.params import load_params
from vaelab.tracking import judge_experiment, training_run
from vaelab.device import pick_device


def main() -> None:
    params = load_params()
    opts = params.judge
    device = pick_device()
    train, test = load_split(True, device), load_split(False, device)
    if opts.batch_size > len(train):
        raise VaelabError(f"judge.batch_size {opts.batch_size} is larger than the {len(train)} training images; lower it")
    torch.manual_seed(params.seed)
    judge = Judge(opts.channels, opts.hidden).to(device)
    steps = opts.epochs * -(-len(train) // opts.batch_size)
    run_params = {"seed": params.seed, **params.settings("judge"), "n_parameters": sum(p.numel() for p in judge.parameters())}
    note = "The digit classifier that the assess stage uses to read the VAEs' samples (DVC stage judge)."
    with (
        training_run(params, "judge", run_params, note, experiment=judge_experiment(params.mlflow)),
        tqdm(total=steps, desc="judge", unit="batch", mininterval=1) as bar,
    ):
        records = train_judge(judge, opts, train, params.seed, on_step=bar.update)
        for record in records:
            mlflow.log_metrics({"train_loss": record["train_loss"], "epoch_seconds": record["epoch_seconds"]}, step=record["epoch"])
        metrics = {
            "test_accuracy": accuracy(judge, test),
            "wall_seconds": sum(r["epoch_seconds"] for r in records),
            "n_parameters": sum(p.numel() for p in judge.parameters()),
        }
        save_judge(judge, paths.judge_model_file())
        paths.write_json(paths.judge_metrics_file(), metrics)
        mlflow.log_metrics({"test_accuracy": metrics["test_accuracy"], "train_seconds": metrics["wall_seconds"]})
        mlflow.log_artifact(str(paths.judge_model_file()))
        mlflow.set_tag("judge_sha256", paths.sha256(paths.judge_model_file()))
    print(f"judge: reads {100 * metrics['test_accuracy']:.2f}% of the {len(test)} test digits correctly")


if __name__ == "__main__":
    run_stage(main)
