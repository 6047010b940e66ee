"""The judge: learns the generated digits, and survives a save and load."""

import torch

from vaelab.data import fetch_mnist, load_split
from vaelab.judge import Judge, accuracy, classify, load_judge, save_judge, train_judge
from vaelab.params import JudgeParams


def test_judge_learns_the_generated_digits_and_round_trips(mirror, tmp_path):
    directory, md5 = mirror
    fetch_mnist(tmp_path, str(directory), md5)
    train, test = load_split(True, torch.device("cpu"), tmp_path), load_split(False, torch.device("cpu"), tmp_path)
    torch.manual_seed(0)
    judge = Judge([8, 16], hidden=32)

    records = train_judge(judge, JudgeParams(epochs=6, batch_size=32, lr=0.01, channels=[8, 16], hidden=32), train, seed=0)

    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert accuracy(judge, test) >= 0.95
    save_judge(judge, tmp_path / "judge.pt")
    loaded = load_judge(tmp_path / "judge.pt", torch.device("cpu"))
    assert torch.equal(classify(loaded, test.images), classify(judge, test.images))
