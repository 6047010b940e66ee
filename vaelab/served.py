"""A trained VAE as an MLflow pyfunc model: reconstruct, encode, sample from the prior and (cvae) generate a digit.

The train stage logs each variant's model under the variant's name (log_model). Use it in Python with
`mlflow.pyfunc.load_model(uri).predict(frame, params={"task": ...})`, or over REST:

    mlflow models serve -m models:/<model_id> --env-manager local -h 127.0.0.1 -p 5001

Requests are a DataFrame plus params. Images are rows of the 784 pixels in [0, 1] (grey level / 255,
row-major 28x28) in the columns pixel_0 .. pixel_783; a conditional model also reads each image's
digit in the column `label`. Every column is optional in the signature, so that sample and generate,
which read no image, take an empty frame; a task that reads images checks for them itself.
Params: task (default reconstruct), n (images to draw, default 1), digit (generate), seed (the same
seed draws the same images; without one every call draws afresh). P stands for the 784 pixel columns
and their values below.

reconstruct: the mean of p(x|z) at the posterior mean z, one row per image, columns pixel_0 ..:
    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_split": {"columns": [P, "label"], "data": [[P, 7]]}}'
encode: the mean and log-variance of q(z|x), one row per image, columns mu_0 .., logvar_0 ..:
      -d '{"dataframe_split": {"columns": [P, "label"], "data": [[P, 7]]}, "params": {"task": "encode"}}'
sample: n images from the prior, pixel columns (a conditional model cycles through the digits, in `label`):
      -d '{"dataframe_split": {"columns": [], "data": []}, "params": {"task": "sample", "n": 8, "seed": 0}}'
generate (conditional models only): n images of one digit, pixel columns and `label`:
      -d '{"dataframe_split": {"columns": [], "data": []}, "params": {"task": "generate", "digit": 3, "n": 8}}'

The answer is {"predictions": [{column: value, ...}, ...]}, one record per row. A bad request (unknown
task, generate on an unconditional model, a digit outside 0-9, no label for a conditional model's
images) is answered 400, with the reason on the last line of its "message".
"""

from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import vaelab
from vaelab.data import N_CLASSES, N_PIXELS, Split
from vaelab.models import load_trained

PIXELS = [f"pixel_{i}" for i in range(N_PIXELS)]
TASKS = ("reconstruct", "encode", "sample", "generate")
# one answer stays under ~20 MB of JSON
MAX_DRAWN = 1000
PARAMS = ParamSchema([
    ParamSpec("task", "string", "reconstruct"),
    ParamSpec("n", "long", 1),
    ParamSpec("digit", "long", None),
    ParamSpec("seed", "long", None),
])
# the distributions vaelab.models imports, directly or through vaelab.data, params and paths
REQUIREMENTS = ("torch", "torchvision", "pydantic", "PyYAML", "pandas")


def as_frame(images: torch.Tensor, labels: torch.Tensor | None = None) -> pd.DataFrame:
    """Images (N, 784) in [0, 1] as the model's rows, with each one's digit in `label` if given."""
    frame = pd.DataFrame(images.double().cpu().numpy(), columns=PIXELS)
    if labels is not None:
        frame["label"] = labels.cpu().numpy()
    return frame


def bad_request(message: str) -> MlflowException:
    # an MlflowException reaches a REST client as a 400 with its message; any other error as a generic one
    return MlflowException.invalid_parameter_value(message)


class ServedVAE(mlflow.pyfunc.PythonModel):
    """The VAE saved by the train stage (the artifact `vae`), on the CPU."""

    def load_context(self, context):
        self.vae = load_trained(Path(context.artifacts["vae"]), torch.device("cpu"))

    @torch.inference_mode()
    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        task = params["task"]
        if task not in TASKS:
            raise bad_request(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")
        if task in ("sample", "generate"):
            return self._draw(self._labels_to_draw(task, params), params["n"], params["seed"])
        x, onehot = self._images(model_input)
        mu, logvar = self.vae.encode(x, onehot)
        if task == "encode":
            dims = range(self.vae.latent_dim)
            columns = [f"mu_{i}" for i in dims] + [f"logvar_{i}" for i in dims]
            return pd.DataFrame(torch.cat([mu, logvar], dim=1).double().numpy(), columns=columns)
        return as_frame(torch.sigmoid(self.vae.decode(mu, onehot)))

    def _images(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images of the request, and for a conditional model their one-hot digits."""
        if missing := [c for c in PIXELS if c not in frame.columns]:
            raise bad_request(f"this task reads images, one per row in the {N_PIXELS} columns pixel_0 .. "
                              f"pixel_{N_PIXELS - 1}; {len(missing)} of them are missing")
        x = torch.tensor(frame[PIXELS].to_numpy(dtype="float32"))
        if not ((x >= 0) & (x <= 1)).all():  # also catches the NaN of an empty cell
            raise bad_request("pixels must be numbers in [0, 1] (grey level / 255)")
        if not self.vae.n_classes:
            return x, None
        if "label" not in frame.columns or frame["label"].isna().any():
            raise bad_request("this model is conditional: give each image's digit (0-9) in the column label")
        labels = torch.tensor(frame["label"].to_numpy(dtype="int64"))
        check_digits(labels)
        return x, F.one_hot(labels, N_CLASSES).float()

    def _labels_to_draw(self, task: str, params: dict) -> torch.Tensor | None:
        """The digit of each image to draw: none for an unconditional model."""
        n = params["n"]
        if not 1 <= n <= MAX_DRAWN:
            raise bad_request(f"n is {n}; draw 1 to {MAX_DRAWN} images per request")
        if task == "sample":
            return torch.arange(n) % N_CLASSES if self.vae.n_classes else None
        if not self.vae.n_classes:
            raise bad_request("generate needs a conditional model (cvae); this one is not: use task sample")
        if params["digit"] is None:
            raise bad_request("generate needs the param digit (0-9)")
        labels = torch.full((n,), params["digit"])
        check_digits(labels)
        return labels

    def _draw(self, labels: torch.Tensor | None, n: int, seed: int | None) -> pd.DataFrame:
        """Mean images of p(x|z) for n z drawn from the prior, each with its digit for a conditional model."""
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # a fresh seed: a Generator otherwise starts at the same fixed one every time
        else:
            generator.manual_seed(seed)
        z = torch.randn(n, self.vae.latent_dim, generator=generator)
        onehot = None if labels is None else F.one_hot(labels, N_CLASSES).float()
        return as_frame(torch.sigmoid(self.vae.decode(z, onehot)), labels)


def check_digits(labels: torch.Tensor) -> None:
    if not ((labels >= 0) & (labels < N_CLASSES)).all():
        raise bad_request(f"digits run from 0 to {N_CLASSES - 1}; got {sorted(set(labels.tolist()))}")


def input_schema(conditional: bool) -> Schema:
    # all optional, so that sample and generate take an empty frame
    columns = [ColSpec("double", name, required=False) for name in PIXELS]
    return Schema(columns + [ColSpec("long", "label", required=False)] if conditional else columns)


def pip_requirements() -> list[str]:
    """The versions in this environment; torch's and torchvision's without a local tag (+cu128), which PyPI lacks."""
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def log_model(model_file: Path, variant: str, example: Split) -> ModelInfo:
    """Log the VAE that save_trained wrote to model_file as the active run's model named after its
    variant, with the vaelab package beside it. example: a test image or a few (Split.first(1)), the
    model's input example."""
    conditional = load_trained(model_file, torch.device("cpu")).n_classes > 0
    return mlflow.pyfunc.log_model(
        name=variant,
        python_model=ServedVAE(),
        artifacts={"vae": str(model_file)},
        code_paths=[str(Path(vaelab.__file__).parent)],
        signature=ModelSignature(inputs=input_schema(conditional), params=PARAMS),
        input_example=as_frame(example.images, example.labels if conditional else None),
        pip_requirements=pip_requirements(),
    )
