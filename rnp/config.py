"""Typed, validated params: one dataclass per params.yaml section.

Every default carries a comment; `load_config` rejects unknown keys, wrong
types and out-of-range values with one line naming the key. Checks that need
the data set (target label < classes, defense size <= clean pool) live in the
poison stage, which knows it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import RnpError

__all__ = ["Config", "load_config", "config_from_dict", "with_overrides"]

POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


@dataclass(frozen=True)
class DataParams:
    dataset: str = "digits"  # registry name, see `rnp list`
    root: str = "data/raw"  # where downloadable data sets are stored
    image_size: int = 32  # gtsrb and folder: images are resized to image_size x image_size
    test_fraction: float = 0.2  # test share, for data sets without an official test split
    defense_size: float = 300  # clean images the defender holds: a count (>= 1) or a fraction of train (< 1)
    defense_holdout: float = 0.34  # share of them held out (from training, unlearn and recover) to pick the threshold
    defense_seed: int = 98  # the defense subset has its own seed (reference: 98)

    def check(self) -> None:
        _in_open(self, "test_fraction", 0.0, 1.0)
        _positive(self, "image_size")
        if self.defense_size <= 0 or (self.defense_size >= 1 and self.defense_size != int(self.defense_size)):
            _bad("defense_size", "must be a whole count >= 1 or a fraction in (0, 1)", self.defense_size)
        _in_closed(self, "defense_holdout", 0.0, 0.9)


@dataclass(frozen=True)
class BadnetsParams:
    size: int = 2  # patch side, pixels (Gu et al.: 3x3 on CIFAR-10)
    position: str = "bottom_right"  # bottom_right | bottom_left | top_right | top_left | center
    pattern: str = "checkerboard"  # checkerboard | white | black | random

    def check(self) -> None:
        _positive(self, "size")
        _one_of(self, "position", POSITIONS)
        _one_of(self, "pattern", ("checkerboard", "white", "black", "random"))


@dataclass(frozen=True)
class BlendParams:
    alpha: float = 0.2  # blend ratio of the generated noise pattern (Chen et al.; BackdoorBench: 0.2)

    def check(self) -> None:
        _in_open(self, "alpha", 0.0, 1.0)


@dataclass(frozen=True)
class TrojanParams:
    size: int = 3  # watermark side, pixels, bottom-right corner
    steps: int = 100  # trigger optimisation steps maximising the chosen neuron (Liu et al. 2018)
    alpha: float = 1.0  # opacity of the watermark inside its mask

    def check(self) -> None:
        _positive(self, "size", "steps")
        _in_closed(self, "alpha", 0.0, 1.0)


@dataclass(frozen=True)
class SigParams:
    delta: float = 20.0  # signal amplitude on the 0..255 scale (Barni et al.: 20)
    frequency: float = 6.0  # sine periods across the image width (Barni et al.: 6)

    def check(self) -> None:
        _positive(self, "delta", "frequency")


@dataclass(frozen=True)
class WanetParams:
    grid: int = 4  # k: control grid side (Nguyen & Tran 2021: 4)
    strength: float = 0.5  # s: warping strength (0.5)
    cross_ratio: float = 2.0  # noise mode: randomly warped, correctly labelled images per poisoned image (2)

    def check(self) -> None:
        _positive(self, "grid", "strength")
        _non_negative(self, "cross_ratio")


@dataclass(frozen=True)
class LcParams:
    eps: float = 16.0  # L-inf budget of the adversarial perturbation, 0..255 scale (Turner et al.: 16/255)
    steps: int = 10  # PGD steps against the attacker's clean surrogate model
    size: int = 3  # checkerboard trigger side, stamped in all four corners

    def check(self) -> None:
        _positive(self, "eps", "steps", "size")


@dataclass(frozen=True)
class IadParams:
    epochs: int = 10  # joint training of trigger generator and surrogate classifier
    cross_ratio: float = 1.0  # cross-trigger images (another image's trigger, true label) per poisoned image
    diversity: float = 1.0  # weight of the diversity loss (Nguyen & Tran 2020: 1)
    mask_density: float = 0.032  # target share of pixels the trigger mask covers
    lr: float = 0.01  # Adam, generators

    def check(self) -> None:
        _positive(self, "epochs", "lr")
        _non_negative(self, "cross_ratio", "diversity")
        _in_open(self, "mask_density", 0.0, 1.0)


@dataclass(frozen=True)
class AdaptiveBlendParams:
    alpha: float = 0.15  # training-time blend ratio (Qi et al. 2023: 0.15)
    test_alpha: float = 0.2  # test-time blend ratio, full trigger (0.2)
    pieces: int = 16  # the trigger is cut into this many equal pieces (16)
    piece_rate: float = 0.5  # share of pieces a poisoned training image gets (0.5)
    cover_ratio: float = 1.0  # cover images (trigger, true label) per poisoned image (Qi et al.: equal rates)

    def check(self) -> None:
        _in_open(self, "alpha", 0.0, 1.0)
        _in_open(self, "test_alpha", 0.0, 1.0)
        _positive(self, "pieces")
        _in_open(self, "piece_rate", 0.0, 1.0)
        _non_negative(self, "cover_ratio")


@dataclass(frozen=True)
class AttackParams:
    name: str = "badnets"  # registry name, see `rnp list`
    target: int = 0  # target class (all_to_one); all_to_all sends y to (y + 1) mod C
    mode: str = "all_to_one"  # all_to_one | all_to_all (where the attack allows it)
    rate: float = 0.1  # share of training images poisoned (clean-label attacks: drawn from the target class)
    surrogate_arch: str = "small_cnn"  # trojan, lc, iad: the clean model the attacker trains for itself
    surrogate_epochs: int = 10
    badnets: BadnetsParams = field(default_factory=BadnetsParams)
    blend: BlendParams = field(default_factory=BlendParams)
    trojan: TrojanParams = field(default_factory=TrojanParams)
    sig: SigParams = field(default_factory=SigParams)
    wanet: WanetParams = field(default_factory=WanetParams)
    lc: LcParams = field(default_factory=LcParams)
    iad: IadParams = field(default_factory=IadParams)
    adaptive_blend: AdaptiveBlendParams = field(default_factory=AdaptiveBlendParams)

    def check(self) -> None:
        _one_of(self, "mode", ("all_to_one", "all_to_all"))
        _in_open(self, "rate", 0.0, 1.0)
        _non_negative(self, "target")
        _positive(self, "surrogate_epochs")

    def settings(self) -> Any:
        """The chosen attack's own section (attack.<name>), or None for an attack without one."""
        return getattr(self, self.name, None)


@dataclass(frozen=True)
class ModelParams:
    arch: str = "small_cnn"  # registry name, see `rnp list`


@dataclass(frozen=True)
class AugmentParams:
    crop_padding: int = 0  # random crop with this zero padding (CIFAR: 4); 0 = off
    flip: bool = False  # random horizontal flip (off for digits: a flipped 3 is not a 3)

    def check(self) -> None:
        if self.crop_padding < 0:
            _bad("crop_padding", "must be >= 0", self.crop_padding)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 30  # backdoor training epochs
    batch_size: int = 64
    lr: float = 0.05  # SGD, cosine schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    compile: bool = False  # torch.compile the training step's model; eager if it cannot compile (pays off on GPUs)

    def check(self) -> None:
        _positive(self, "epochs", "batch_size", "lr")
        _non_negative(self, "momentum", "weight_decay")


@dataclass(frozen=True)
class UnlearnParams:
    lr: float = 0.005  # reference: 0.01 (CIFAR-10 ResNet-18); 0.005 keeps the small CNN from overshooting
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [10, 20])  # MultiStepLR epochs
    gamma: float = 0.1
    max_epochs: int = 20  # stop after this many epochs at the latest
    clean_threshold: float = 0.20  # stop once an epoch's running defense accuracy <= this
    batch_size: int = 64  # reference 128 on 500 images = 4 steps/epoch; 64 keeps that on 200
    clip_grad_norm: float = 0.0  # 0 = off; the reference's clipping has no effect, so off matches it

    def check(self) -> None:
        _positive(self, "lr", "max_epochs", "batch_size")
        _non_negative(self, "momentum", "weight_decay", "gamma", "clip_grad_norm")
        _in_closed(self, "clean_threshold", 0.0, 1.0)
        if any(m < 1 for m in self.milestones):
            _bad("milestones", "must be epochs >= 1", self.milestones)


@dataclass(frozen=True)
class RecoverParams:
    lr: float = 0.1  # SGD on the masks only; reference: 0.2 for ResNet-18
    momentum: float = 0.9
    alpha: float = 0.2  # loss = alpha * CE
    epochs: int = 20
    batch_size: int = 128
    mask_on: str = "bn"  # bn (as published) | norm (any norm layer's weight) | conv (conv output channels) | auto

    def check(self) -> None:
        _positive(self, "lr", "alpha", "epochs", "batch_size")
        _non_negative(self, "momentum")
        _one_of(self, "mask_on", ("auto", "bn", "norm", "conv"))


@dataclass(frozen=True)
class PruneParams:
    sweep: str = "threshold"  # threshold: prune masks <= t; number: prune the k lowest masks
    max_threshold: float = 0.90  # threshold sweep: 0 .. max_threshold ...
    step: float = 0.05  # ... in this step
    max_number: int = 200  # number sweep: 0 .. max_number channels ...
    number_step: int = 10  # ... in this step
    select: str = "auto"  # auto: chosen on clean held-out defense data; fixed: use threshold / number below
    max_clean_drop: float = 0.01  # auto: prune while held-out clean accuracy stays within this of the t = 0 point (or the unpruned model)
    max_first_drop: float = 0.3  # auto: if t = 0 alone costs more held-out accuracy than this, prune nothing
    threshold: float = 0.20  # fixed, sweep=threshold
    number: int = 20  # fixed, sweep=number
    oracle_max_asr: float = 0.05  # oracle (reporting only): best test CA among points with ASR <= this

    def check(self) -> None:
        _one_of(self, "sweep", ("threshold", "number"))
        _one_of(self, "select", ("auto", "fixed"))
        _in_closed(self, "max_threshold", 0.0, 1.0)
        _in_closed(self, "threshold", 0.0, 1.0)
        _in_closed(self, "max_clean_drop", 0.0, 1.0)
        _in_closed(self, "max_first_drop", 0.0, 1.0)
        _in_closed(self, "oracle_max_asr", 0.0, 1.0)
        _positive(self, "step", "number_step")
        _non_negative(self, "max_number", "number")


@dataclass(frozen=True)
class Config:
    seed: int = 0  # seeds poisoning, initialisation and batch order
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on a CUDA GPU, else fp32) | fp32 | bf16 (fast on GPUs and AMX CPUs)
    data: DataParams = field(default_factory=DataParams)
    attack: AttackParams = field(default_factory=AttackParams)
    model: ModelParams = field(default_factory=ModelParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    train: TrainParams = field(default_factory=TrainParams)
    unlearn: UnlearnParams = field(default_factory=UnlearnParams)
    recover: RecoverParams = field(default_factory=RecoverParams)
    prune: PruneParams = field(default_factory=PruneParams)

    def check(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            _bad("device", "must be auto, cpu, cuda, cuda:N or mps", self.device)
        _one_of(self, "precision", ("auto", "fp32", "bf16"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise RnpError(f"missing params file {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RnpError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
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
        return _build(Config, raw, prefix="")
    except RnpError as e:
        raise RnpError(f"{source}: {e}") from None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RnpError(f"{prefix.rstrip('.') or 'params'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        raise RnpError(f"unknown key {prefix}{unknown[0]} (valid keys: {', '.join(names)})")
    values = {}
    for name in names:
        if name not in raw:
            continue
        key, hint, value = prefix + name, hints[name], raw[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key + ".")
        else:
            values[name] = _coerce(key, hint, value)
    obj = cls(**values)
    if hasattr(obj, "check"):
        try:
            obj.check()
        except _BadValue as e:
            raise RnpError(f"{prefix}{e}") from None
    return obj


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise RnpError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise RnpError(f"{key} must be {hint.__name__}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise RnpError(f"{key} must be a finite number, got {value!r}")
    return float(value) if hint is float else value


class _BadValue(Exception):
    """A check failed; `_build` prefixes the section, so checks name keys relative to their own section."""


def _bad(key: str, rule: str, value: Any) -> None:
    raise _BadValue(f"{key} {rule}, got {value!r}")


def _in_open(obj: Any, name: str, lo: float, hi: float) -> None:
    v = getattr(obj, name)
    if not lo < v < hi:
        _bad(name, f"must be in ({lo:g}, {hi:g})", v)


def _in_closed(obj: Any, name: str, lo: float, hi: float) -> None:
    v = getattr(obj, name)
    if not lo <= v <= hi:
        _bad(name, f"must be in [{lo:g}, {hi:g}]", v)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            _bad(name, "must be > 0", getattr(obj, name))


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            _bad(name, "must be >= 0", getattr(obj, name))


def _one_of(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in choices:
        _bad(name, f"must be one of {', '.join(choices)}", v)
