"""The schema of params.yaml: every stage validates the whole file before doing any work."""

import difflib
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, PositiveInt, ValidationError, ValidationInfo, field_validator, model_validator
)

from vaelab.data import DOWNLOAD_TIMEOUT_SECONDS
from vaelab.errors import VaelabError

PARAMS_FILE = Path("params.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Strict):
    md5: dict[str, str] = {}
    timeout_seconds: float = Field(DOWNLOAD_TIMEOUT_SECONDS, gt=0)


class VariantParams(Strict):
    epochs: PositiveInt
    hidden: list[PositiveInt] = Field(min_length=1)
    conditional: bool = False
    kl_warmup_epochs: int = Field(0, ge=0)
    # staged: Burda et al.'s 3^i epochs at lr * 10^(-i/7), vaelab.train.staged_lr_factor
    lr_schedule: Literal["constant", "cosine", "staged"] = "constant"
    activation: Literal["relu", "tanh"] = "relu"
    # train on binary pixels b ~ Bernoulli(x), drawn afresh for every batch; tested on the test set binarised once
    binarize: bool = False
    output_bias_from_data: bool = False  # the decoder's output bias starts at the logit of the mean training pixel
    train_images: PositiveInt | None = None  # train on the first this many training images; all when unset
    adam_eps: float = Field(1e-8, gt=0)
    # unset: the shared top-level values; Params.variant() fills them in
    latent_dim: PositiveInt | None = None
    batch_size: PositiveInt | None = None


# a variant's name names its files and its DVC stages (train@<name>)
VARIANT_NAME = re.compile(r"[a-z][a-z0-9_]*")


class EvaluateParams(Strict):
    batch_size: PositiveInt = 1000
    binarize_seed: int = Field(0, ge=0)  # the one binarisation of the test set that binarised figures use


class RenderParams(Strict):
    n_images: PositiveInt = 8
    grid_size: PositiveInt = 8
    interpolation_steps: int = Field(10, ge=2)


class JudgeParams(Strict):
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 128
    lr: float = Field(0.002, gt=0)
    channels: list[PositiveInt] = Field([32, 64], min_length=1, max_length=4)
    hidden: PositiveInt = 128
    max_shift: int = Field(2, ge=0, le=4)


class AssessParams(Strict):
    iwae_k: PositiveInt = 50
    samples_per_digit: PositiveInt = 1000
    prior_samples: PositiveInt = 10000


class TraversalParams(Strict):
    dims: PositiveInt = 8
    steps: int = Field(9, ge=2)
    span: float = Field(3.0, gt=0)


class MlflowParams(Strict):
    experiment: str = Field("vaelab", min_length=1)
    busy_timeout_seconds: float = Field(60.0, gt=0)


class Params(Strict):
    seed: int = Field(0, ge=0)
    latent_dim: PositiveInt
    batch_size: PositiveInt
    lr: float = Field(gt=0)
    data: DataParams = DataParams()
    variants: dict[str, VariantParams] = Field(min_length=1)
    pipeline: list[str] = Field(min_length=1)  # every variant when unset
    evaluate: EvaluateParams = EvaluateParams()
    render: RenderParams = RenderParams()
    judge: JudgeParams = JudgeParams()
    assess: AssessParams = AssessParams()
    traversal: TraversalParams = TraversalParams()
    mlflow: MlflowParams = MlflowParams()

    @field_validator("variants")
    @classmethod
    def _names_fit_files_and_stages(cls, variants: dict[str, VariantParams]) -> dict[str, VariantParams]:
        for name in variants:
            if not VARIANT_NAME.fullmatch(name):
                raise ValueError(f"'{name}' cannot name a variant: use lowercase letters, digits and _, starting with a letter")
        return variants

    @model_validator(mode="before")
    @classmethod
    def _pipeline_defaults_to_every_variant(cls, data):
        if isinstance(data, dict) and "pipeline" not in data and isinstance(data.get("variants"), dict):
            return {**data, "pipeline": list(data["variants"])}
        return data

    @field_validator("pipeline")
    @classmethod
    def _names_defined_variants(cls, pipeline: list[str], info: ValidationInfo) -> list[str]:
        variants = info.data.get("variants", {})
        for name in pipeline:
            if name not in variants:
                raise ValueError(f"'{name}' is not under variants ({', '.join(variants)})")
        if len(set(pipeline)) < len(pipeline):
            raise ValueError("a variant is named twice")
        return pipeline

    def variant(self, name: str) -> VariantParams:
        """A variant's params, with the shared latent_dim and batch_size where it sets none of its own."""
        if name not in self.variants:
            raise VaelabError(f"unknown variant '{name}'; params.yaml has: {', '.join(self.variants)}")
        variant = self.variants[name]
        return variant.model_copy(
            update={"latent_dim": variant.latent_dim or self.latent_dim, "batch_size": variant.batch_size or self.batch_size}
        )

    def test_binarize_seed(self, name: str) -> int | None:
        """The seed of the test set's binarisation a variant trained on binary pixels is tested on; None: grey pixels."""
        return self.evaluate.binarize_seed if self.variants[name].binarize else None

    def run_params(self, name: str) -> dict:
        """The flat params that shape one variant's training and its test curve, as MLflow records them."""
        return {"variant": name, "seed": self.seed, "lr": self.lr, **self.variant(name).model_dump(), **self.settings("evaluate")}

    def settings(self, *sections: str) -> dict:
        """Sections of params.yaml as flat params, as MLflow records them: {"assess.iwae_k": 50, ...}."""
        return {f"{section}.{key}": value for section in sections for key, value in getattr(self, section).model_dump().items()}


def stage_variant(params: Params, argv: list[str]) -> str:
    """The variant a per-variant stage was started for: `python -m stages.<stage> VARIANT`."""
    if len(argv) != 2:
        stage = Path(argv[0]).stem
        raise VaelabError(f"usage: python -m stages.{stage} VARIANT, with VARIANT one of {', '.join(params.pipeline)}")
    params.variant(argv[1])
    return argv[1]


def load_params(path: Path = PARAMS_FILE) -> Params:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise VaelabError(f"{path} not found: run from the repository root") from None
    except yaml.YAMLError as err:
        raise VaelabError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    try:
        # float lr may be written as an int (1); strict mode would refuse that otherwise
        if isinstance(raw, dict) and isinstance(raw.get("lr"), int) and not isinstance(raw["lr"], bool):
            raw["lr"] = float(raw["lr"])
        return Params.model_validate(raw)
    except ValidationError as err:
        # a misspelt key also makes the right one missing: name the misspelling, it is the cause
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise VaelabError(f"{path}: {describe(errors[0])}") from None


def describe(error: dict) -> str:
    """One line for the first schema error: the key, and what is allowed there."""
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        parent, parts = Params, list(error["loc"][:-1])
        while parts:
            parent = parent.model_fields[parts.pop(0)].annotation
            if get_origin(parent) is dict:  # variants: the next part is a variant's name
                parts.pop(0)
                parent = get_args(parent)[1]
        guess = difflib.get_close_matches(str(error["loc"][-1]), list(parent.model_fields), n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        return f"unknown key '{key}'{hint}; allowed here: {', '.join(parent.model_fields)}"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    got = "" if isinstance(error["input"], dict) else f" (got {error['input']!r})"
    return f"{key}: {message}{got}"
