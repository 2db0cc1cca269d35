"""Kernel choices measured once per machine and kept, so every start of a deployment runs the same kernels.

`determinism: fast` picks its kernels by timing them (kernel_choice.py); timed at every start, two
starts on one machine could choose differently and answer differently. A choice is measured once and
stored under PENSTOCK_HOME/kernels, in a file named by everything it depends on: the CPU (model name
and feature flags), the torch version, the model file's digest and the deployment's settings that
shape the question. Every later start, and every replica given the same home, reads it back.
`penstock engine calibrate` measures again on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import structlog
import torch

log = structlog.get_logger("penstock.engine")
Source = Literal["measured", "stored"]


class KernelMemory:
    """One deployment's stored kernel choices: a JSON object of answers by question ("weights", "attention")."""

    def __init__(self, path: Path, *, remeasure: bool = False) -> None:
        self.path = path
        self.remeasure = remeasure
        self.sources: dict[str, Source] = {}

    @classmethod
    def for_model(
        cls, home: Path, model_path: Path, settings: dict[str, Any], *, remeasure: bool = False
    ) -> KernelMemory:
        key = {
            "machine": machine_fingerprint(),
            "torch": torch.__version__,
            "model": file_digest(model_path),
            **settings,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return cls(home / "kernels" / f"{model_path.stem}-{digest}.json", remeasure=remeasure)

    def recall(self, question: str) -> dict[str, Any] | None:
        """The stored answer, unless asked to measure again or none is stored (or the file is unreadable)."""
        if self.remeasure:
            return None
        answer = self.stored().get(question)
        if answer is not None:
            self.sources[question] = "stored"
        return answer

    def keep(self, question: str, answer: dict[str, Any]) -> None:
        """Store a measured answer beside the others; written whole and renamed, so readers never see half."""
        self.sources[question] = "measured"
        answers = {**self.stored(), question: answer}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(answers, indent=2, sort_keys=True))
            partial.replace(self.path)
        except OSError as exc:  # a read-only home: the choice still holds for this start
            log.warning("kernel_choice_not_stored", path=str(self.path), reason=str(exc))

    def stored(self) -> dict[str, Any]:
        try:
            answers = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return answers if isinstance(answers, dict) else {}


def machine_fingerprint() -> str:
    """The CPU's model name and feature flags, as /proc/cpuinfo gives them (empty elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    wanted = ("model name", "flags")
    return "\n".join(next((line for line in lines if line.startswith(name)), "") for name in wanted)


def file_digest(path: Path) -> str:
    """sha256 of a model file; for a folder, of its files' names and sizes (a Hugging Face checkpoint)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                digest.update(f"{child.relative_to(path)}:{child.stat().st_size}\n".encode())
        return digest.hexdigest()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
