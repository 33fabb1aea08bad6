"""The building blocks of params sections: a strict pydantic base and the value types they use.

Light on purpose (pydantic only): attack modules define their own sections with
these, and rnp.config assembles them into the whole params model.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Section", "Positive", "NonNegative", "Unit", "OpenUnit", "Count", "Index", "Seed", "choices"]

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]  # [0, 1]
OpenUnit = Annotated[float, Field(gt=0, lt=1)]  # (0, 1)
Count = Annotated[int, Field(gt=0, le=10**9)]  # a count past a billion is a typo, and overflows torch's index types
Index = Annotated[int, Field(ge=0, le=10**9)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]  # what torch.Generator.manual_seed takes


def choices(literal: Any) -> tuple[str, ...]:
    """The valid values of a Literal type, in order: choices(MaskOn) == ("auto", "bn", "norm", "conv")."""
    return typing.get_args(literal)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
