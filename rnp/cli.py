"""`rnp poison|train|unlearn|recover|prune`: one subcommand per stage; `baseline`, `list`, `preset` and `defend` beside them."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .config import DetectionRule, MaskOn, choices, load_config, with_overrides
from .errors import RnpError
from .stages import STAGES, run_stage

__all__ = ["main"]

DEBUG_ENV = "RNP_DEBUG"


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="rnp", description="Reconstructive Neuron Pruning: backdoor defense pipeline.")
    ap.add_argument("--debug", action="store_true", help=f"show the traceback of an internal error (or set {DEBUG_ENV}=1)")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for stage in STAGES.values():
        sp = sub.add_parser(stage.name, help=stage.help)
        sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
        for inp in stage.inputs:
            sp.add_argument(f"--{inp}", type=Path, default=Path("data") / inp, help=f"{inp} stage outputs (default: data/{inp})")
        sp.add_argument("--out", type=Path, default=Path("data") / stage.name, help=f"output folder (default: data/{stage.name})")
    b = sub.add_parser("baseline", help="another defense (ANP, FT) on the pipeline's model and clean data, measured as prune measures RNP")
    b.add_argument("--defense", required=True, help="registered defense other than rnp (rnp list)")
    b.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    for inp in ("poison", "train"):
        b.add_argument(f"--{inp}", type=Path, default=Path("data") / inp, help=f"{inp} stage outputs (default: data/{inp})")
    b.add_argument("--out", type=Path, required=True, help="output folder: model.safetensors, metrics.json, curve.csv")
    sub.add_parser("list", help="list data sets, attacks, architectures and defenses")
    rp = sub.add_parser("report", help="the one table of a pipeline run: CA/ASR/RA of every model it made")
    rp.add_argument("--data", type=Path, default=Path("data"), help="the stages' output folders (default: data)")
    rp.add_argument("--md", action="store_true", help="a markdown table")
    pr = sub.add_parser("preset", help="print a named params set as `dvc exp run` flags: dvc exp run $(rnp preset fashion_mnist)")
    pr.add_argument("name", help="e.g. fashion_mnist (the paper's ratios on real images)")
    d = sub.add_parser("defend", help="purify a model someone else trained, with a little clean data")
    d.add_argument("--model", type=Path, required=True, help="weights: .safetensors, or a PyTorch state dict (loaded weights_only)")
    d.add_argument("--arch", required=True, help="architecture name (rnp list), or torchvision:<name>")
    d.add_argument("--data", required=True, help="a registered data set name, or a folder of labelled clean images (one subfolder per class)")
    d.add_argument("--out", type=Path, required=True, help="purified model, .safetensors; masks, curve and report are written beside it")
    d.add_argument("--params", type=Path, default=None, help="unlearn/recover/prune settings (default: built-in defaults)")
    d.add_argument("--defense-size", type=int, default=500, help="clean images to draw from a registered data set (default 500)")
    d.add_argument("--image-size", type=int, default=32, help="folder data: resize images to this side (default 32)")
    d.add_argument("--mean", help="normalisation the model was trained with, e.g. 0.4914,0.4822,0.4465 (default: the data's own)")
    d.add_argument("--std", help="e.g. 0.247,0.243,0.261 (default: the data's own)")
    d.add_argument("--defense", default="rnp", help="registered defense (rnp list; default rnp)")
    d.add_argument("--export", action="append", choices=("onnx",), default=[],
                   help="also write the purified model as ONNX (checked with onnxruntime against PyTorch on the clean images)")
    d.add_argument("--channels", type=int, choices=(1, 3),
                   help="read folder images as grey (1) or RGB (3) (default: what the model's first layer takes)")
    d.add_argument("--classes", help="folder data: the class folders in the model's label order, comma-separated (default: the "
                                     "folder's classes.txt, else numerical when every name is a number, else by name)")
    d.add_argument("--mask-on", choices=choices(MaskOn), help="what to mask (recover.mask_on): BN (auto picks it when present), norm, conv")
    d.add_argument("--force", action="store_true", help="prune even when no backdoor is detected (prune.force)")
    d.add_argument("--detection", choices=choices(DetectionRule),
                   help="unlearn.detection: collapse (default): unlearning collapses the model onto one class; emergent: and that class led "
                        "alone when the collapse began (no false alarm on the benchmark's clean models, fewer targets named: docs/defend.md)")
    d.add_argument("--min-accuracy", type=float, default=0.5,
                   help="refuse a model scoring less on the clean images (default 0.5): it is mis-specified, not defended")
    return ap


def _run(args: argparse.Namespace) -> int | None:
    if args.command == "list":
        from .attacks import ATTACKS
        from .datasets import DATASETS
        from .defense import DEFENSES
        from .models import MODELS

        for registry in (DATASETS, ATTACKS, MODELS, DEFENSES):
            print(f"{registry.kind}s ({registry.key}):")
            for name, line in registry.describe().items():
                print(f"  {name:<18} {line}")
        return
    if args.command == "report":
        from .stages import report

        report.run(args.data, args.md)
        return
    if args.command == "preset":
        from .presets import dvc_flags

        print(dvc_flags(args.name))
        return
    if args.command == "baseline":
        from .stages import baseline

        baseline.run(load_config(args.params), args.poison, args.train, args.out, args.defense)
        return
    if args.command == "defend":
        from .config import Config, config_from_dict
        from .stages import defend

        cfg = load_config(args.params) if args.params else Config()
        flags = {"recover.mask_on": args.mask_on, "unlearn.detection": args.detection, "prune.force": True if args.force else None}
        cfg = config_from_dict(with_overrides(cfg.to_dict(), {k: v for k, v in flags.items() if v is not None}))
        classes = None if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
        report = defend.run(cfg, args.model, args.arch, args.data, args.out, args.defense_size, args.image_size, args.mean, args.std,
                            args.min_accuracy, args.defense, args.channels, classes, args.params, args.export)
        return report.extra["exit_code"]
    cfg = load_config(args.params)
    run_stage(args.command, cfg, {i: getattr(args, i) for i in STAGES[args.command].inputs}, args.out)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        return _run(args) or 0
    except RnpError as e:  # the user's input: one line, exit 2
        print(f"rnp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every file is written atomically, so nothing half-written is left
        print(f"rnp {args.command}: interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except Terminated:
        print(f"rnp {args.command}: terminated (SIGTERM); nothing half-written was left", file=sys.stderr)
        return 143
    except Exception as e:  # a bug of ours, not the user's: one line that says so, exit 1
        if args.debug or os.environ.get(DEBUG_ENV):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"rnp {args.command}: internal error: {type(e).__name__}: {first} (rnp --debug {args.command} ... "
              f"or {DEBUG_ENV}=1 shows the traceback; please report it)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that open writers remove their temporary files on the way out."""


def _terminated(signum, frame) -> None:
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
