"""The teachers a distilling module holds: frozen models by name, and which rows each one teaches.

A teacher is loaded as a policy is (a preset, hub id, local folder, ``.gguf`` file) or as a trained policy is found
(:func:`~lit_align.models.runs.load_trained`: a lit-align run directory, its ``hf_model/`` export, a single-file
``.ckpt``); from Python also an ``nn.Module``. Each distinct source is loaded once, whatever the number of names it
has. Teachers are frozen (no grads, eval mode), padding-free and prefix-sharing like the student, and held OUT of the
module tree as the reference is: in no optimizer, no checkpoint, and sharded (resharded after their forward) under
FSDP2 by the base's ``configure_model``; a resumed run loads them again from their sources.

A teacher whose vocabulary is not the student's is refused when the module is built, with both names and sizes: the
divergence compares distributions over the same token ids, so a different tokenizer (or the same one with another
number of output rows) would compare other tokens.

Several teachers (multi-teacher on-policy distillation): each prompt row names its teacher in the data's
``teacher_id`` column (:meth:`Teachers.rows_of`); a name that is not a teacher is an error that names the row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lit_align.errors import DataError, OptionError, UserError
from lit_align.models.loading import ModelRef
from lit_align.models.runs import load_trained
from lit_align.reference.mixin import frozen

T = TypeVar("T")
TEACHER_COLUMN = "teacher_id"


class Teachers:
    """The frozen teacher models by name.

    Args:
        sources: teacher name -> source (one teacher: ``{"teacher": source}``).
        student: the student, whose padding-free and shared-prefix settings the teachers take.
        student_tokenizer: the student's tokenizer (its vocabulary is the teachers' too).
        student_name: the student's name, for the messages.
    """

    def __init__(self, sources: Mapping[str, ModelRef], student: nn.Module, student_tokenizer: Any,
                 student_name: str) -> None:  # fmt: skip
        if not sources:
            raise OptionError("distillation needs a teacher: --model.teacher <source>, or --model.teachers "
                              "'{name: source, ...}'")  # fmt: skip
        loaded: dict[int | str, nn.Module] = {}
        self.models: dict[str, nn.Module] = {}
        for name, source in sources.items():
            key = id(source) if isinstance(source, nn.Module) else str(source)
            if key not in loaded:
                try:
                    model, tokenizer = _load(source)
                except UserError as err:  # which option named the missing or unreadable model
                    option = "teacher" if len(sources) == 1 and name == "teacher" else f"teachers.{name}"
                    raise type(err)(f"--model.{option}: {err}") from err
                check_teacher_vocabulary(name, source, model, tokenizer, student, student_tokenizer, student_name)
                loaded[key] = frozen(model, student)
            self.models[name] = loaded[key]
        self.sources = {name: source if isinstance(source, str) else type(source).__name__
                        for name, source in sources.items()}  # fmt: skip

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def frozen_models(self) -> list[nn.Module]:
        """Each loaded teacher once (the base moves them to the device and shards them under FSDP2)."""
        unique: dict[int, nn.Module] = {id(m): m for m in self.models.values()}
        return list(unique.values())

    def rows_of(self, batch: Mapping[str, Any], num_rows: int, num_generations: int,
                device: torch.device) -> dict[str, Tensor]:  # fmt: skip
        """Each teacher's rows of a rollout of ``batch`` (``num_rows``, prompt-major, ``num_generations`` per prompt):
        every row the one teacher's, or, with several, the rows whose prompt's ``teacher_id`` names it (teachers
        without rows left out)."""
        num_prompts = num_rows // num_generations
        if len(self.models) == 1:
            return {self.names[0]: torch.arange(num_prompts * num_generations, device=device)}
        ids = teacher_ids(batch, self.names)
        rows: dict[str, Tensor] = {}
        for name in self.names:
            prompts = [i for i, given in enumerate(ids) if given == name]
            if prompts:
                index = torch.tensor(prompts, device=device)
                rows[name] = (index[:, None] * num_generations + torch.arange(num_generations, device=device)).flatten()
        return rows

    @torch.no_grad()
    def forward(self, name: str, like: nn.Module, compute: Callable[[nn.Module], T]) -> T:
        """``compute(teacher)`` without grad, the teacher on ``like``'s device and (floating) dtype."""
        teacher = self.models[name]
        param, student_param = next(teacher.parameters()), next(like.parameters())
        if param.device != student_param.device:
            teacher.to(student_param.device)
        if param.is_floating_point() and student_param.is_floating_point() and param.dtype != student_param.dtype:
            teacher.to(student_param.dtype)  # Trainer(precision="bf16-true") converts the registered student only
        return compute(teacher)


def teacher_ids(batch: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The batch's ``teacher_id`` column, each value checked to name a teacher."""
    if TEACHER_COLUMN not in batch:
        raise DataError(f"{len(names)} teachers ({', '.join(names)}) need a '{TEACHER_COLUMN}' column in the prompt "
                        "data naming each row's teacher")  # fmt: skip
    ids = [str(v) for v in batch[TEACHER_COLUMN]]
    for i, given in enumerate(ids):
        if given not in names:
            where = batch.get("row_index")
            row = f"row {int(where[i])}" if where is not None else f"batch row {i}"
            raise DataError(f"{row}, field '{TEACHER_COLUMN}': {given!r} is not a teacher; the teachers are "
                            f"{', '.join(names)}")  # fmt: skip
    return ids


def _load(source: ModelRef) -> tuple[nn.Module, Any]:
    """A module as it is (no tokenizer to check), anything else as a trained policy is found: a run directory, an
    export, a ``.ckpt``, else whatever ``load_model`` takes."""
    if isinstance(source, nn.Module):
        return source, None
    trained = load_trained(str(source))
    return trained.model, trained.tokenizer


def check_teacher_vocabulary(name: str, source: ModelRef, teacher: nn.Module, teacher_tokenizer: Any,
                             student: nn.Module, student_tokenizer: Any, student_name: str) -> None:  # fmt: skip
    """Refuse a teacher whose output rows or tokenizer differ from the student's, naming both and their sizes."""
    label = f"teacher {name!r} ({source if isinstance(source, str) else type(source).__name__})"
    rows_t = _output_rows(teacher)
    rows_s = _output_rows(student)
    if rows_t != rows_s:
        raise OptionError(f"{label} predicts {rows_t} tokens but the student {student_name!r} predicts {rows_s}: "
                          "distillation compares distributions over one vocabulary; use a teacher of the student's "
                          "tokenizer")  # fmt: skip
    if teacher_tokenizer is not None and student_tokenizer is not None and (
        teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab()
    ):
        raise OptionError(f"{label} has a tokenizer of {len(teacher_tokenizer)} tokens that is not the student "
                          f"{student_name!r}'s ({len(student_tokenizer)} tokens): the same ids name other tokens; "
                          "use a teacher of the student's tokenizer")  # fmt: skip


def _output_rows(model: nn.Module) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return None if weight is None else int(weight.shape[0])
