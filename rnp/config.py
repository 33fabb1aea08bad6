"""Typed, validated params: one pydantic model per params.yaml section.

Every default carries a comment. Models forbid unknown keys, take types strictly
(no "3" for 3, no true for 1) and refuse NaN/inf; `config_from_dict` turns the
first violation into one line naming the key: `params.yaml: prune.step must be
> 0, got -1`. Checks that need the data set (target label < classes, defense
size <= clean pool) live in the poison stage, which knows it.

The `Literal` types here are the single source of every choice list (the CLI
and the stages read them with `choices()`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator

from .errors import RnpError
from .param_types import Count, Index, NonNegative, OpenUnit, Positive, Section, Seed, Unit, choices

__all__ = [
    "Config", "load_config", "config_from_dict", "with_overrides", "choices",
    "DataParams", "AttackParams", "ModelParams", "AugmentParams", "TrainParams", "UnlearnParams", "RecoverParams", "PruneParams", "AnpParams",
    "FinetuneParams",
    "Precision", "MaskOn", "DetectionRule", "Mode", "Sweep", "Select",
]

Precision = Literal["auto", "fp32", "bf16"]
MaskOn = Literal["auto", "bn", "norm", "conv"]
Mode = Literal["all_to_one", "all_to_all"]
Sweep = Literal["threshold", "number"]
Select = Literal["auto", "fixed"]
DetectionRule = Literal["collapse", "emergent"]

class DataParams(Section):
    dataset: str = "digits"  # registry name, see `rnp list`
    root: str = "data/raw"  # where downloadable data sets are stored
    image_size: Annotated[int, Field(gt=0, le=4096)] = 32  # gtsrb and folder: images are resized to image_size x image_size
    test_fraction: OpenUnit = 0.2  # test share, for data sets without an official test split
    defense_size: Positive = 300  # clean images the defender holds: a count (>= 1) or a fraction of train (< 1)
    defense_holdout: Annotated[float, Field(ge=0, le=0.9)] = 0.34  # share of them held out (from training, unlearn and recover) to pick the threshold
    defense_seed: Seed = 98  # the defense subset has its own seed (reference: 98)

    @field_validator("defense_size")
    @classmethod
    def _count_or_fraction(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("must be a whole count >= 1 or a fraction in (0, 1)")
        return v


class AttackCommon(Section):
    name: str = "badnets"  # registry name, see `rnp list`
    target: Index = 0  # target class (all_to_one); all_to_all sends y to (y + 1) mod C
    mode: Mode = "all_to_one"  # all_to_all where the attack allows it
    rate: OpenUnit = 0.1  # share of training images poisoned (clean-label attacks: drawn from the target class)
    surrogate_arch: str = "small_cnn"  # trojan, lc, iad: the clean model the attacker trains for itself
    surrogate_epochs: Count = 10

    def settings(self) -> Any:
        """The chosen attack's own section (attack.<name>), or None for an attack without one."""
        return getattr(self, self.name, None)


# attack.<name>: each attack's own settings, in registration order (rnp/attacks/__init__.py); rnp.attacks reads them, and
# keeping them here spares every stage that does not poison from importing the attacks


class BadnetsParams(Section):
    size: Count = 2  # patch side, pixels (Gu et al.: 3x3 on CIFAR-10)
    position: Literal["bottom_right", "bottom_left", "top_right", "top_left", "center"] = "bottom_right"
    pattern: Literal["checkerboard", "white", "black", "random"] = "checkerboard"


class BlendParams(Section):
    alpha: OpenUnit = 0.2  # blend ratio of the generated noise pattern (Chen et al.; BackdoorBench: 0.2)


class TrojanParams(Section):
    size: Count = 3  # watermark side, pixels, bottom-right corner
    steps: Count = 100  # trigger optimisation steps maximising the chosen neuron (Liu et al. 2018)
    alpha: Unit = 1.0  # opacity of the watermark inside its mask


class SigParams(Section):
    delta: Positive = 20.0  # signal amplitude on the 0..255 scale (Barni et al.: 20)
    frequency: Positive = 6.0  # sine periods across the image width (Barni et al.: 6)


class WanetParams(Section):
    grid: Count = 4  # k: control grid side (Nguyen & Tran 2021: 4)
    strength: Positive = 0.5  # s: warping strength (0.5)
    cross_ratio: NonNegative = 2.0  # noise mode: randomly warped, correctly labelled images per poisoned image (2)


class LcParams(Section):
    eps: Positive = 16.0  # L-inf budget of the adversarial perturbation, 0..255 scale (Turner et al.: 16/255)
    steps: Count = 10  # PGD steps against the attacker's clean surrogate model
    size: Count = 3  # checkerboard trigger side, stamped in all four corners
    # false: leave black pixels alone. On black backgrounds (Fashion-MNIST) a perturbed background is
    # itself a feature the model learns for the target class, and the trigger is then never learnt
    perturb_background: bool = True


class IadParams(Section):
    epochs: Count = 10  # joint training of trigger generator and surrogate classifier
    cross_ratio: NonNegative = 1.0  # cross-trigger images (another image's trigger, true label) per poisoned image
    diversity: NonNegative = 1.0  # weight of the diversity loss (Nguyen & Tran 2020: 1)
    mask_density: OpenUnit = 0.032  # target share of pixels the trigger mask covers
    lr: Positive = 0.01  # Adam, generators


class AdaptiveBlendParams(Section):
    alpha: OpenUnit = 0.15  # training-time blend ratio (Qi et al. 2023: 0.15)
    test_alpha: OpenUnit = 0.2  # test-time blend ratio, full trigger (0.2)
    pieces: Count = 16  # the trigger is cut into this many equal pieces (16)
    piece_rate: OpenUnit = 0.5  # share of pieces a poisoned training image gets (0.5)
    cover_ratio: NonNegative = 1.0  # cover images (trigger, true label) per poisoned image (Qi et al.: equal rates)


AttackParams = create_model(
    "AttackParams", __base__=AttackCommon,
    **{name: (section, section()) for name, section in {
        "badnets": BadnetsParams,
        "blend": BlendParams,
        "trojan": TrojanParams,
        "sig": SigParams,
        "wanet": WanetParams,
        "lc": LcParams,
        "iad": IadParams,
        "adaptive_blend": AdaptiveBlendParams,
    }.items()},
)


class ModelParams(Section):
    arch: str = "small_cnn"  # registry name, see `rnp list`


class AugmentParams(Section):
    crop_padding: Annotated[int, Field(ge=0, le=256)] = 0  # random crop with this zero padding (CIFAR: 4); 0 = off
    flip: bool = False  # random horizontal flip (off for digits: a flipped 3 is not a 3)


class TrainParams(Section):
    epochs: Count = 30  # backdoor training epochs
    batch_size: Count = 64
    lr: Positive = 0.05  # SGD, cosine schedule
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 5e-4
    compile: bool = False  # torch.compile the training step's model; eager if it cannot compile (pays off on GPUs)


class UnlearnParams(Section):
    lr: Positive = 0.005  # reference: 0.01 (CIFAR-10 ResNet-18); 0.005 keeps the small CNN from overshooting
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 5e-4
    milestones: list[Annotated[int, Field(ge=1)]] = [10, 20]  # MultiStepLR epochs
    gamma: NonNegative = 0.1
    max_epochs: Count = 20  # stop after this many epochs at the latest
    clean_threshold: Unit = 0.20  # stop once an epoch's running defense accuracy <= this
    batch_size: Count = 64  # reference 128 on 500 images = 4 steps/epoch; 64 keeps that on 200
    clip_grad_norm: NonNegative = 0.0  # 0 = off; the reference's clipping has no effect, so off matches it
    # how the unlearned model is read for a backdoor: it collapsed onto one class | emergent: and that class led alone as the collapse began
    detection: DetectionRule = "collapse"


class RecoverParams(Section):
    lr: Positive = 0.1  # SGD on the masks only; reference: 0.2 for ResNet-18
    momentum: NonNegative = 0.9
    alpha: Positive = 0.2  # loss = alpha * CE
    epochs: Count = 20
    batch_size: Count = 128
    # auto: bn when the model has BN (as published), else norm, else conv | bn | norm (any norm layer's weight) | conv (conv output channels)
    mask_on: MaskOn = "auto"


class PruneParams(Section):
    sweep: Sweep = "threshold"  # threshold: prune masks <= t; number: prune the k lowest masks
    max_threshold: Unit = 0.90  # threshold sweep: 0 .. max_threshold ...
    step: Positive = 0.05  # ... in this step
    max_number: Index = 200  # number sweep: 0 .. max_number channels ...
    number_step: Count = 10  # ... in this step
    select: Select = "auto"  # auto: chosen on clean held-out defense data; fixed: use threshold / number below
    force: bool = False  # prune even when unlearning shows no sign of a backdoor (unlearn.detection); the sweep is measured either way
    max_clean_drop: Unit = 0.01  # auto: prune while held-out clean accuracy stays within this of the t = 0 point (or the unpruned model)
    max_first_drop: Unit = 0.3  # auto: if t = 0 alone costs more held-out accuracy than this, prune nothing
    threshold: Unit = 0.20  # fixed, sweep=threshold
    number: Index = 20  # fixed, sweep=number
    oracle_max_asr: Unit = 0.05  # oracle (reporting only): best test CA among points with ASR <= this
    fit_epochs: Count = 20  # the bias-refit check: epochs of Adam over the unlearn/recover images, only the classifier's biases trainable
    fit_lr: Positive = 0.05  # the bias-refit check: Adam's learning rate


class AnpParams(Section):
    """`rnp defend --defense anp`: Adversarial Neuron Pruning (Wu & Wang 2021), its reference's values."""

    eps: Unit = 0.4  # bound of the multiplicative noise on every BN channel's weight and bias (anp_eps)
    steps: Count = 1  # signed-gradient steps of the noise, each of size eps / steps (anp_steps)
    alpha: Unit = 0.2  # loss = alpha * CE(clean) + (1 - alpha) * CE(perturbed) (anp_alpha)
    lr: Positive = 0.2  # SGD (momentum 0.9) on the masks
    iterations: Count = 2000  # mask updates, each on a batch drawn with replacement from the clean images
    batch_size: Count = 128


class FinetuneParams(Section):
    """`rnp defend --defense ft`: plain fine-tuning on the clean images, the floor every backdoor paper reports.
    BackdoorBench's FT recipe (config/defense/ft): SGD, momentum 0.9, weight decay 5e-4, lr 0.01 annealed to 0
    by a cosine over 100 epochs; its batch is 256 on 2,500 images, ours RNP's 128 on the defender's few hundred."""

    epochs: Count = 100
    lr: Positive = 0.01
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 5e-4
    batch_size: Count = 128


class Config(Section):
    seed: Seed = 0  # seeds poisoning, initialisation and batch order
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: Precision = "auto"  # auto: bf16 on a CUDA GPU, else fp32 | fp32 | bf16 (fast on GPUs and AMX CPUs)
    data: DataParams = DataParams()
    attack: AttackParams = AttackParams()
    model: ModelParams = ModelParams()
    augment: AugmentParams = AugmentParams()
    train: TrainParams = TrainParams()
    unlearn: UnlearnParams = UnlearnParams()
    recover: RecoverParams = RecoverParams()
    prune: PruneParams = PruneParams()
    anp: AnpParams = AnpParams()  # rnp defend --defense anp only
    ft: FinetuneParams = FinetuneParams()  # rnp defend --defense ft only

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise RnpError(f"missing params file {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RnpError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RnpError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise RnpError(f"{path} is nested too deeply to be a params file") from None
    return config_from_dict(raw or {}, source=str(path))


def with_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """A copy of raw params with dotted-key overrides applied: {"train.epochs": 2} (`dvc exp run -S` style)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise RnpError(f"cannot set {key}: {s} is not a section")
        node[leaf] = value
    return out


def config_from_dict(raw: Any, source: str = "params") -> Config:
    """Build and validate a Config; errors read `params.yaml: prune.step must be > 0, got -1`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise RnpError(f"{source}: {_one_line(e.errors()[0])}") from None


def _one_line(err: dict) -> str:
    """A pydantic error as rnp says it: `<dotted key> <rule>, got <value>`."""
    loc = tuple(str(part) for part in err["loc"])
    key = "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in loc).lstrip(".") or "params"
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        section = _section(loc[:-1])
        return f"unknown key {key} (valid keys: {', '.join(section.model_fields)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key} must be a mapping, got {type(value).__name__}"
    if kind == "literal_error":
        return f"{key} must be one of {', '.join(choices(_section(loc[:-1]).model_fields[loc[-1]].annotation))}, got {value!r}"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _bounds(loc, err)
        if max(bounds.get("lt", 0), bounds.get("le", 0)) >= 10**9:  # a sanity cap, not a range: name only the side crossed
            side = ("gt", "ge") if kind.startswith("greater") else ("lt", "le")
            bounds = {k: v for k, v in bounds.items() if k in side}
        return f"{key} must be {_range(bounds)}, got {value!r}"
    if kind in ("int_type", "float_type", "bool_type", "string_type", "list_type", "int_from_float"):
        expected = {"int_from_float": "int", "string_type": "str"}.get(kind, kind.removesuffix("_type"))
        return f"{key} must be {expected}, got {value!r}"
    if kind == "value_error":
        return f"{key} {err['ctx']['error']}, got {value!r}"
    return f"{key}: {err['msg']}, got {value!r}"


def _section(loc: tuple[str, ...]) -> type[Section]:
    cls: type[Section] = Config
    for part in loc:
        cls = cls.model_fields[part].annotation
    return cls


def _bounds(loc: tuple[str, ...], err: dict) -> dict[str, float]:
    """A key's numeric bounds ({"gt": 0, "lt": 1}); a list item's come from its error."""
    if loc[-1].isdigit():
        return err["ctx"]
    metadata = _section(loc[:-1]).model_fields[loc[-1]].metadata
    return {name: getattr(m, name) for m in metadata for name in ("gt", "ge", "lt", "le") if getattr(m, name, None) is not None}


def _range(b: dict[str, float]) -> str:
    lo = ("(", b["gt"]) if "gt" in b else ("[", b["ge"]) if "ge" in b else None
    hi = (")", b["lt"]) if "lt" in b else ("]", b["le"]) if "le" in b else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]:g}"
    return f"{'<' if hi[0] == ')' else '<='} {hi[1]:d}" if isinstance(hi[1], int) else f"{'<' if hi[0] == ')' else '<='} {hi[1]:g}"
