"""torch.compile's cost and gain for one training step, against eager in the same run.

    python -m benchmarks.compile_step [--arch resnet18] [--batch 128] [--steps 10] [--device cpu]

Prints the first (compiling) call, the steady per-step time of each, and after how many
steps compiling pays off. That break-even is what `train.compile` should be judged by.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from rnp.compute import compile_or_eager
from rnp.models import ModelSpec, create_model


def time_steps(forward, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """Seconds of the first training step, and the mean of the next `steps`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    spec = ModelSpec(args.arch, 10, (3, args.size, args.size), (0.5,) * 3, (0.25,) * 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *spec.input_shape, generator=g).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(args.device)
    result = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = create_model(spec).to(args.device).train()
        result[name] = time_steps(compile_or_eager(model) if name == "compiled" else model, model, x, y, args.steps)
    (e_first, e_step), (c_first, c_step) = result["eager"], result["compiled"]
    gain = e_step - c_step
    breakeven = (c_first - e_first) / gain if gain > 0 else float("inf")
    print(f"{args.arch}, batch {args.batch}, {args.device}: eager {e_step:.3f} s/step; compiled {c_step:.3f} s/step "
          f"({e_step / c_step:.2f}x) after a first call of {c_first:.1f} s; compiling pays off after {breakeven:.0f} steps")
    return {"eager_step": e_step, "compiled_step": c_step, "compile_first": c_first, "breakeven_steps": breakeven}


if __name__ == "__main__":
    main()
