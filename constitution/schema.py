"""The constitution's schema: principles, an optional system prompt and few-shot exemplars."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from core.schema import Message

NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1)]
PrincipleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class Principle(BaseModel):
    """One principle: how to critique, how to revise, and what the judge asks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: PrincipleId = Field(description="Stable identifier; assignments and fingerprints use it.")
    critique_request: NonEmptyText = Field(description="User turn asking the model to critique its last answer.")
    revision_request: NonEmptyText = Field(description="User turn asking the model to rewrite its answer.")
    comparison_question: NonEmptyText = Field(description="Question the judge answers about two responses.")
    tags: list[str] = Field(default_factory=list, description="Free labels, e.g. harm, honesty, helpfulness.")
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False,
                          description="Relative chance of being assigned; a finite number > 0.")

    _check_texts = field_validator("critique_request", "revision_request", "comparison_question")(_not_blank)

    def texts(self) -> dict[str, str]:
        """What a row that used this principle depends on (its fingerprint input)."""
        return {
            "id": self.id,
            "critique_request": self.critique_request,
            "revision_request": self.revision_request,
        }


class Exemplar(BaseModel):
    """A worked critique-revision transcript shown to the model before the real one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation: list[Message] = Field(min_length=1, description="Turns up to and including the answer to critique.")
    critique_request: NonEmptyText
    critique: NonEmptyText
    revision_request: NonEmptyText
    revision: NonEmptyText

    @field_validator("conversation")
    @classmethod
    def _ends_with_answer(cls, turns: list[Message]) -> list[Message]:
        if turns[-1].role != "assistant":
            raise ValueError("must end with the assistant answer that the critique is about")
        return turns

    def messages(self) -> list[dict[str, str]]:
        return [turn.model_dump() for turn in self.conversation] + [
            {"role": "user", "content": self.critique_request},
            {"role": "assistant", "content": self.critique},
            {"role": "user", "content": self.revision_request},
            {"role": "assistant", "content": self.revision},
        ]


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | str = Field(description="Version of this constitution, recorded in every manifest.")
    system_prompt: str | None = Field(default=None, description="Optional system turn for every conversation.")
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[Exemplar] = Field(default_factory=list)

    def principle(self, principle_id: str) -> Principle:
        for principle in self.principles:
            if principle.id == principle_id:
                return principle
        raise KeyError(principle_id)

    def content_hash(self) -> str:
        from core.hashing import stable_hash

        return stable_hash(self.model_dump(mode="json"))
