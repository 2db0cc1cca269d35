"""The peer: transformers' own Llama on the same GGUF, `generate` over static, left-padded batches.

transformers is a test dependency, not a runtime one: it is imported only when the baseline runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from penstock.bench.progress import NoProgress, Progress
from penstock.bench.workload import BenchRequest


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_hf_model(gguf_path: Path, dtype: torch.dtype) -> Any:
    """LlamaForCausalLM with the weights transformers itself dequantises from the GGUF.

    Not `from_pretrained(gguf_file=...)`: that insists on `accelerate`, which Penstock does not need.
    """
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)  # lm_head is missing: it is tied to the embedding
    return model.eval()


@dataclass(frozen=True, slots=True)
class HFRun:
    batch: int
    wall_s: float
    output_tokens: int  # each request's own length; what a batch generates past it is waste

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s


def best_run(model: Any, requests: Seq[BenchRequest], batches: Seq[int], eos: int, progress: Progress) -> list[HFRun]:
    """One run per batch size (capped at the number of requests), fastest first."""
    sizes = sorted({min(b, len(requests)) for b in batches})
    return sorted((run(model, requests, b, eos, progress) for b in sizes), key=lambda r: -r.tok_s)


def run(model: Any, requests: Seq[BenchRequest], batch: int, eos: int, progress: Progress | None = None) -> HFRun:
    """The requests in arrival order, `batch` at a time; each batch runs until its longest output is done."""
    progress = progress or NoProgress()
    progress.phase(f"transformers, batch {batch}", sum(r.max_tokens for r in requests))
    start = time.perf_counter()
    for i in range(0, len(requests), batch):
        group = requests[i : i + batch]
        generate(model, group, max(r.max_tokens for r in group), eos)
        progress.advance(sum(r.max_tokens for r in group))
    return HFRun(batch, time.perf_counter() - start, sum(r.max_tokens for r in requests))


def generate(model: Any, group: Seq[BenchRequest], new_tokens: int, eos: int, streamer: Any = None) -> torch.Tensor:
    """Greedy, exactly `new_tokens` tokens per row (eos cannot end a row early)."""
    ids, mask = left_pad([r.prompt for r in group], eos)
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=eos,
        eos_token_id=eos,
        streamer=streamer,
    )


def left_pad(prompts: Seq[Seq[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@dataclass(slots=True)
class TokenClock:
    """A generate() streamer that notes when each new token arrives (its first put is the prompt)."""

    times: list[float] = field(default_factory=list)
    puts: int = 0

    def put(self, value: torch.Tensor) -> None:
        if self.puts:
            self.times.append(time.perf_counter())
        self.puts += 1

    def end(self) -> None:
        pass


def single_stream_tok_s(model: Any, request: BenchRequest, eos: int) -> float:
    """Decode tokens per second of one request alone, time to first token excluded."""
    clock = TokenClock()
    generate(model, [request], request.max_tokens, eos, streamer=clock)
    return (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])
