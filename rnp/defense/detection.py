"""Reading a backdoor off the unlearned model: which class does unlearning collapse clean images onto?

Unlearning a backdoored model on clean data sends other classes' images to the backdoor
target; a clean model resists unlearning and spreads its errors. `detect_target` finds that
class and `Detection.backdoored` applies the rule (`unlearn.detection`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import DeviceData

__all__ = ["Detection", "detect_target", "emerged_alone", "probe_predictions", "sink_scores", "no_evidence_message",
           "DETECTION_THRESHOLD", "COLLAPSED", "EMERGE_LEVEL", "EMERGE_LEAD", "NEAR_CHANCE"]

# A model is called backdoored when unlearning collapses it (running clean accuracy <= COLLAPSED)
# and the collapsed model sends at least DETECTION_THRESHOLD of other classes' clean images to one
# class (2.5x the 0.1 of a uniform 10-class model): clean models resist unlearning and spread
# their errors, backdoored ones collapse onto the target (measured in docs/defend.md, "Target-label detection").
DETECTION_THRESHOLD = 0.25
COLLAPSED = 0.3
# detection "emergent" also asks that the final class led alone when the collapse began: at the
# first unlearning epoch where any class draws >= EMERGE_LEVEL of other classes' images, it draws
# >= EMERGE_LEAD times the runner-up's share. A clean model's collapse starts spread over
# look-alike classes and often changes its leader (measured on every model of the Fashion-MNIST
# benchmark in docs/levers.md, "Detection rules").
EMERGE_LEVEL = 0.10
EMERGE_LEAD = 2.0
# A model within this of chance on the clean images (1 / classes) never learnt them: any model collapses under
# unlearning then, so a collapse says nothing about a backdoor, whatever --min-accuracy let through.
NEAR_CHANCE = 0.10


@dataclass(frozen=True)
class Detection:
    target: int  # the class the unlearned model sends most clean images of other classes to
    score: float  # that share
    scores: list[float]  # per class
    unlearned_acc: float  # running clean accuracy of the last unlearning epoch
    rule: str = "collapse"  # unlearn.detection
    emerged: bool = True  # the target led alone when the collapse began (what rule "emergent" adds)
    history: list[list[float]] = field(default_factory=list)  # `scores` after each unlearning epoch (rule "emergent" only)
    start_acc: float | None = None  # the model's clean accuracy before unlearning (None: not measured)

    @property
    def near_chance(self) -> bool:
        return self.start_acc is not None and self.start_acc < 1 / len(self.scores) + NEAR_CHANCE

    @property
    def backdoored(self) -> bool:
        collapsed = self.unlearned_acc <= COLLAPSED and self.score >= DETECTION_THRESHOLD
        return collapsed and (self.rule == "collapse" or self.emerged) and not self.near_chance

    def to_json(self) -> dict:
        """The keys report.json and the unlearn stage's metrics carry."""
        return {"backdoor_suspected": self.backdoored, "suspected_target": self.target, "target_score": self.score,
                "unlearned_acc": self.unlearned_acc, "class_scores": self.scores, "detection_rule": self.rule,
                "epoch_scores": self.history}


def sink_scores(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per class c: the share of other classes' images predicted as c."""
    scores = []
    for c in range(num_classes):
        others = labels != c
        scores.append((preds[others] == c).float().mean().item() if others.any() else 0.0)
    return scores


def emerged_alone(history: list[list[float]], target: int, level: float = EMERGE_LEVEL, lead: float = EMERGE_LEAD) -> bool:
    """Whether `target` led alone at the first epoch of `history` (per-epoch sink scores) where any class drew >= level."""
    for scores in history:
        ranked = sorted(scores, reverse=True)
        if ranked[0] >= level:
            return scores.index(ranked[0]) == target and ranked[0] >= lead * ranked[1]
    return False


@torch.no_grad()
def probe_predictions(model: nn.Module, clean: DeviceData) -> torch.Tensor:
    """Predictions with batch statistics (train-mode BN, on a copy), as unlearning itself saw the data."""
    probe = copy.deepcopy(model).train()
    return torch.cat([probe(x).argmax(1) for x, _ in clean.batches(256)])


def detect_target(unlearned: nn.Module, clean: DeviceData, num_classes: int, unlearned_acc: float = 0.0,
                  history: list[list[float]] | None = None, rule: str = "collapse", start_acc: float | None = None) -> Detection:
    """Unlearning a backdoored model sends clean images to the backdoor target: find that class.

    Predictions use batch statistics (train-mode BN), as unlearning itself saw the data;
    with the running statistics the collapsed model often falls into an unrelated sink class.
    `history`: the sink scores after each unlearning epoch, which rule "emergent" reads.
    """
    scores = sink_scores(probe_predictions(unlearned, clean), clean.labels, num_classes)
    target = max(range(num_classes), key=lambda c: scores[c])
    emerged = emerged_alone(history if history is not None else [scores], target)
    return Detection(target, scores[target], scores, unlearned_acc, rule, emerged, list(history or []), start_acc)


def no_evidence_message(d: Detection) -> str:
    if d.near_chance:
        return (f"no evidence of a backdoor: the model scores {d.start_acc:.0%} on the clean images, near chance "
                f"({1 / len(d.scores):.0%}), and unlearning collapses such a model whether or not it has one")
    if d.rule == "emergent" and not d.emerged and d.unlearned_acc <= COLLAPSED and d.score >= DETECTION_THRESHOLD:
        return (f"no evidence of a backdoor (unlearning sends {d.score:.0%} of other classes' images to class {d.target}, "
                f"but that class did not lead alone when the collapse began, as look-alike classes do)")
    return (f"no evidence of a backdoor (unlearning left {d.unlearned_acc:.0%} clean accuracy; "
            f"at most {d.score:.0%} of other classes' images go to one class)")
