"""The logged model as its users meet it: through mlflow.pyfunc, and over REST from `mlflow models serve`.

Tiny untrained VAEs do: what matters is that every task gives what the VAE's own encode and decode give."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import mlflow
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PyFuncModel

from tests.conftest import user_env
from tests.servers import answers, free_port, stop, wait_for
from vaelab import served
from vaelab.data import N_CLASSES, N_PIXELS, Split, fetch_mnist, load_split
from vaelab.models import VAE, save_trained
from vaelab.params import VariantParams

LATENT_DIM, HIDDEN = 4, [16]
CONDITIONAL = {"vae": False, "cvae": True}


class Logged(NamedTuple):
    vae: VAE
    info: ModelInfo
    model: PyFuncModel


@pytest.fixture(scope="module")
def test_images(tmp_path_factory, mirror) -> Split:
    directory, md5 = mirror
    root = tmp_path_factory.mktemp("data")
    fetch_mnist(root, str(directory), md5)
    return load_split(False, torch.device("cpu"), root)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A throwaway SQLite store, in force for this module's tests only."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri, mlflow.create_experiment("served", artifact_location=(folder / "artifacts").as_uri())
        finally:
            mlflow.set_tracking_uri(None)  # unsets the variable too; leaving the context restores the caller's


@pytest.fixture(scope="module")
def logged(store, test_images, tmp_path_factory) -> dict[str, Logged]:
    """vae and cvae, saved as the train stage saves them and logged in one run with the first test image."""
    _, experiment_id = store
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    result = {}
    with mlflow.start_run(experiment_id=experiment_id):
        for variant, conditional in CONDITIONAL.items():
            vae = VAE(LATENT_DIM, HIDDEN, n_classes=N_CLASSES if conditional else 0).eval()
            params = VariantParams(epochs=1, hidden=HIDDEN, latent_dim=LATENT_DIM, conditional=conditional)
            save_trained(vae, params, folder / f"{variant}.pt")
            info = served.log_model(folder / f"{variant}.pt", variant, test_images.first(1))
            result[variant] = Logged(vae, info, mlflow.pyfunc.load_model(info.model_uri))
    return result


def onehot(labels: torch.Tensor, conditional: bool) -> torch.Tensor | None:
    return F.one_hot(labels, N_CLASSES).float() if conditional else None


def images_of(frame: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(frame[served.PIXELS].to_numpy(dtype="float32"))


def prior_draws(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, LATENT_DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", CONDITIONAL)
def test_the_model_is_logged_under_its_variant_with_a_real_image_and_params(logged, test_images, variant):
    info = logged[variant].info
    assert info.name == variant
    assert mlflow.get_logged_model(info.model_id).name == variant
    example = logged[variant].model.metadata.load_input_example(info.model_uri)
    torch.testing.assert_close(images_of(example), test_images.images[:1], rtol=0, atol=0)
    assert test_images.images[0].max() > 0.5  # a digit, not a black image
    assert list(example.get("label", [])) == ([int(test_images.labels[0])] if CONDITIONAL[variant] else [])
    signature = logged[variant].model.metadata.signature
    assert {p.name: p.default for p in signature.params.params} == {"task": "reconstruct", "n": 1, "digit": None, "seed": None}
    assert signature.inputs.input_names() == served.PIXELS + (["label"] if CONDITIONAL[variant] else [])
    requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text().splitlines()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements


@pytest.mark.parametrize("variant", CONDITIONAL)
def test_reconstruct_and_encode_are_the_vaes_own(logged, test_images, variant):
    vae, _, model = logged[variant]
    conditional = CONDITIONAL[variant]
    images = test_images.first(5)
    frame = served.as_frame(images.images, images.labels if conditional else None)
    with torch.no_grad():
        mu, logvar = vae.encode(images.images, onehot(images.labels, conditional))
        expected = torch.sigmoid(vae.decode(mu, onehot(images.labels, conditional)))

    reconstructed = model.predict(frame)
    assert list(reconstructed.columns) == served.PIXELS
    torch.testing.assert_close(images_of(reconstructed), expected)

    encoded = model.predict(frame, params={"task": "encode"})
    assert list(encoded.columns) == [f"mu_{i}" for i in range(LATENT_DIM)] + [f"logvar_{i}" for i in range(LATENT_DIM)]
    torch.testing.assert_close(torch.tensor(encoded.to_numpy(dtype="float32")), torch.cat([mu, logvar], dim=1))


@pytest.mark.parametrize("variant", CONDITIONAL)
def test_samples_from_the_prior_repeat_with_their_seed(logged, variant):
    vae, _, model = logged[variant]
    conditional = CONDITIONAL[variant]
    sample = lambda **params: model.predict(pd.DataFrame(), params={"task": "sample", "n": 12, **params})
    drawn = sample(seed=3)
    labels = torch.arange(12) % N_CLASSES  # a conditional model cycles through the digits
    with torch.no_grad():
        expected = torch.sigmoid(vae.decode(prior_draws(12, 3), onehot(labels, conditional)))
    torch.testing.assert_close(images_of(drawn), expected)
    assert list(drawn.get("label", [])) == (labels.tolist() if conditional else [])
    pd.testing.assert_frame_equal(sample(seed=3), drawn)
    assert not sample(seed=4).equals(drawn)
    assert not sample().equals(sample())  # no seed: fresh draws


def test_cvae_generates_the_digit_asked(logged):
    vae, _, model = logged["cvae"]
    generated = model.predict(pd.DataFrame(), params={"task": "generate", "digit": 7, "n": 3, "seed": 5})
    assert generated.shape == (3, N_PIXELS + 1)
    assert generated["label"].tolist() == [7, 7, 7]
    with torch.no_grad():
        expected = torch.sigmoid(vae.decode(prior_draws(3, 5), onehot(torch.full((3,), 7), True)))
    torch.testing.assert_close(images_of(generated), expected)


@pytest.mark.parametrize("variant, frame, params, message", [
    ("vae", "empty", {"task": "generate", "digit": 3}, "generate needs a conditional model (cvae); this one is not"),
    ("cvae", "empty", {"task": "generate", "digit": 10}, "digits run from 0 to 9; got [10]"),
    ("cvae", "empty", {"task": "generate"}, "generate needs the param digit (0-9)"),
    ("cvae", "unlabelled", {}, "this model is conditional: give each image's digit (0-9) in the column label"),
    ("cvae", "labelled", {"task": "decode"}, "unknown task 'decode'; the tasks are reconstruct, encode, sample, generate"),
    ("vae", "empty", {"task": "encode"}, "this task reads images, one per row in the 784 columns pixel_0 .. pixel_783"),
    ("vae", "empty", {"task": "sample", "n": 0}, "n is 0; draw 1 to 1000 images per request"),
    ("vae", "grey levels", {}, "pixels must be numbers in [0, 1] (grey level / 255)"),
])
def test_a_bad_request_says_what_is_wrong_in_one_line(logged, test_images, variant, frame, params, message):
    images = test_images.first(2)
    frame = {
        "empty": pd.DataFrame(),
        "unlabelled": served.as_frame(images.images),
        "labelled": served.as_frame(images.images, images.labels),
        "grey levels": served.as_frame(images.images * 255),
    }[frame]
    with pytest.raises(MlflowException) as raised:
        logged[variant].model.predict(frame, params=params)
    assert message in raised.value.message
    assert "\n" not in raised.value.message


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_mlflow_models_serve_answers_every_task_over_rest(logged, store, test_images, tmp_path):
    uri, _ = store
    vae, info, model = logged["cvae"]
    port = free_port()
    log = tmp_path / "serve.log"
    # run from an empty folder, so vaelab can only come from the model's own copy
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", info.model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=tmp_path, env=user_env({"MLFLOW_TRACKING_URI": uri}), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        def ready() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"mlflow models serve exited: {log.read_text()[-3000:]}")
            return answers(f"http://127.0.0.1:{port}/ping")

        wait_for(ready, "mlflow models serve", seconds=300)
        invocations = f"http://127.0.0.1:{port}/invocations"
        images = test_images.first(2)
        split = json.loads(served.as_frame(images.images, images.labels).to_json(orient="split", index=False))
        none = {"columns": [], "data": []}
        answered = {}
        for task, frame, params in [
            ("reconstruct", split, {}),
            ("encode", split, {"task": "encode"}),
            ("sample", none, {"task": "sample", "n": 4, "seed": 1}),
            ("generate", none, {"task": "generate", "digit": 2, "n": 3, "seed": 1}),
        ]:
            status, body = post(invocations, {"dataframe_split": frame, "params": params})
            assert status == 200, body
            answered[task] = pd.DataFrame(body["predictions"])
            expected = model.predict(pd.DataFrame(frame["data"], columns=frame["columns"]), params=params)
            pd.testing.assert_frame_equal(answered[task], expected, check_dtype=False)
        assert answered["reconstruct"].shape == (2, N_PIXELS)
        assert answered["encode"].shape == (2, 2 * LATENT_DIM)
        assert answered["sample"].shape == (4, N_PIXELS + 1)
        assert answered["generate"]["label"].tolist() == [2, 2, 2]

        status, body = post(invocations, {"dataframe_split": none, "params": {"task": "generate", "digit": 12}})
        assert status == 400
        assert body["message"].splitlines()[-1] == "Error: digits run from 0 to 9; got [12]"
    finally:
        stop(server)
