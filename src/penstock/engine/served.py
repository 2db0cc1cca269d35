"""A deployment as the pipeline sees it: chat template, tokenizer, context window and token stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import torch

from penstock.config import DeploymentConfig
from penstock.engine.async_engine import AsyncEngine
from penstock.engine.chat_template import ChatTemplate, Part
from penstock.engine.gguf_loader import has_4bit_layers
from penstock.engine.grammar import GrammarCompiler
from penstock.engine.kernels.calibration import KernelMemory
from penstock.engine.kernels.kernel_choice import KV_DTYPES, AttentionChoice
from penstock.engine.kernels.kernel_choice import choose_attention as choose_attention_by_timing
from penstock.engine.kernels.native import load_attention_kernel
from penstock.engine.llm_engine import EngineConfig
from penstock.engine.loader import Quantize, load_chat_model, read_prompt_side
from penstock.engine.locator import locate_chat_model
from penstock.engine.model import ModelArgs
from penstock.engine.observer import EngineObserver
from penstock.engine.paged_attention import PagedKVCache
from penstock.engine.scheduler import SchedulerConfig
from penstock.engine.sequence import Priority
from penstock.engine.tokenizer import Tokenizer
from penstock.types import Grammar, Message, Prompt, RequestPriority, SamplingParams, TokenEvent

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ChatCodec:
    """A model's prompt side: chat template, tokenizer and context window (the pipeline's ChatFormat)."""

    def __init__(
        self, template: ChatTemplate, tokenizer: Tokenizer, context_window: int, grammars: GrammarCompiler | None = None
    ) -> None:
        self._template = template
        self._tokenizer = tokenizer
        self.context_window = context_window
        self._grammars = grammars or GrammarCompiler(tokenizer)
        self._template_ids: dict[str, list[int]] = {}

    def encode_chat(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        """The conversation as the model sees it; message text can never become control tokens."""
        parts = self._template.render_parts(messages, add_generation_prompt=True)
        ids = [i for part in parts for i in self._part_ids(part)]
        return "".join(part.text for part in parts), ids

    def _part_ids(self, part: Part) -> list[int]:
        if part.from_message:
            return self._tokenizer.encode(part.text, parse_special=False)
        # What the template writes around messages is a handful of strings: tokenized once each.
        ids = self._template_ids.get(part.text)
        if ids is None:
            ids = self._tokenizer.encode(part.text)
            if len(self._template_ids) < 1024:
                self._template_ids[part.text] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def with_window(self, context_window: int) -> ChatCodec:
        """The same template and tokenizer, fitting prompts to another window (a remote server's own)."""
        return ChatCodec(self._template, self._tokenizer, context_window, self._grammars)

    def check_grammar(self, grammar: Grammar) -> None:
        """Compile the grammar now (cached for generation), so an invalid one fails before admission."""
        self._grammars.compile(grammar)


class ServedModel(ChatCodec):
    def __init__(self, engine: AsyncEngine) -> None:
        loaded = engine.loaded
        super().__init__(loaded.chat_template, loaded.tokenizer, engine.context_window, engine.grammars)
        self.engine = engine

    def generate(
        self, prompt: Prompt, params: SamplingParams, priority: RequestPriority = "interactive"
    ) -> AsyncIterator[TokenEvent]:
        return self.engine.generate(prompt, params, Priority[priority.upper()])

    def close(self) -> None:
        self.engine.close()


def prompt_codec(deployment: DeploymentConfig, read: dict[Path, ChatCodec] | None = None) -> ChatCodec:
    """A remote deployment's prompt side: its model file's tokenizer and template (no weights), fitted to
    its context window. `read`: codecs already read, by file, which deployments of one model share."""
    read = {} if read is None else read
    path = locate_chat_model(deployment.model_path)
    if path not in read:
        checkpoint = read_prompt_side(path)
        read[path] = ChatCodec(checkpoint.chat_template, checkpoint.tokenizer, checkpoint.args.max_seq_len)
    codec = read[path]
    if deployment.context_window is not None and deployment.context_window != codec.context_window:
        return codec.with_window(deployment.context_window)
    return codec


def quantization(weights: str, path: Path, determinism: str = "fast") -> Quantize:
    """auto: a 4-bit GGUF gets the int4 and bf16 kernels where they time faster (its weights already lie
    on the int4 grid, and with its head rescored in fp32, bf16 layers stay nearer fp32 than int4 ones).
    batch_invariant: none; its kernels multiply the file's exact grids (kernels/batch_invariant.py)."""
    if determinism == "batch_invariant":
        return "off"
    if weights == "auto":
        return "measure" if path.suffix == ".gguf" and has_4bit_layers(path) else "off"
    return {"int4": "on", "int4-bf16": "measure"}.get(weights, "off")


def choose_attention(
    kv_setting: str, kernel_setting: str, args: ModelArgs, dtype: torch.dtype, memory: KernelMemory | None = None
) -> AttentionChoice:
    """The KV cache dtype and decode path the settings ask for; `auto` ones timed on this CPU (or as
    `memory` holds them from an earlier start)."""
    kv_dtypes = KV_DTYPES if kv_setting == "auto" else (DTYPES[kv_setting],)
    # The kernel reads fp32 queries; a bf16 model keeps SDPA. "native" still falls back where it cannot build.
    buildable = dtype == torch.float32 and kernel_setting != "sdpa" and load_attention_kernel() is not None
    natives = {"auto": (False, True), "native": (True,), "sdpa": (False,)}[kernel_setting] if buildable else (False,)
    return choose_attention_by_timing(args, kv_dtypes, natives, memory)


def engine_config(deployment: DeploymentConfig, args: ModelArgs, memory: KernelMemory | None = None) -> EngineConfig:
    settings, dtype = deployment.engine, DTYPES[deployment.dtype]
    if deployment.determinism == "batch_invariant":  # fixed rules, nothing timed
        kv_dtype = torch.float32 if settings.kv_cache_dtype == "auto" else DTYPES[settings.kv_cache_dtype]
        attention = AttentionChoice(kv_dtype, native=False)
    else:
        attention = choose_attention(settings.kv_cache_dtype, settings.attention_kernel, args, dtype, memory)
    tokens = settings.kv_cache_tokens
    if settings.kv_cache_bytes is not None:
        tokens = settings.kv_cache_bytes // PagedKVCache.bytes_per_token(args, attention.kv_dtype)
    return EngineConfig(
        block_size=settings.block_size,
        kv_cache_tokens=tokens,
        kv_dtype=attention.kv_dtype,
        prefix_caching=settings.prefix_caching,
        determinism=deployment.determinism,
        native_attention=attention.native,
        scheduler=SchedulerConfig(max_num_seqs=settings.max_num_seqs, max_batched_tokens=settings.max_batched_tokens),
    )


def kernel_memory(
    deployment: DeploymentConfig, path: Path, home: Path | None, *, remeasure: bool = False
) -> KernelMemory | None:
    """Where a `fast` deployment's timed kernel choices are kept (PENSTOCK_HOME/kernels); None for
    batch_invariant, whose kernels are fixed, or without a home (timed at every start)."""
    if deployment.determinism == "batch_invariant" or home is None:
        return None
    settings = {"dtype": deployment.dtype, "weights": deployment.weights, "threads": deployment.engine.threads}
    settings |= {"kv": deployment.engine.kv_cache_dtype, "attention": deployment.engine.attention_kernel}
    return KernelMemory.for_model(home, path, settings, remeasure=remeasure)


def load_served_models(
    deployments: Iterable[DeploymentConfig],
    observe: Callable[[str], EngineObserver] | None = None,
    home: Path | None = None,
) -> dict[str, ServedModel]:
    """Load every deployment's weights; a missing model file fails here, at start, not per request.

    `observe` gives each deployment's engine its observer (metrics), by deployment name; `home` keeps
    `fast` deployments' kernel choices from one start to the next.
    """
    served = {}
    for deployment in deployments:
        if deployment.backend != "engine":
            continue
        path, dtype = locate_chat_model(deployment.model_path), DTYPES[deployment.dtype]
        memory = kernel_memory(deployment, path, home)
        configure = partial(engine_config, deployment, memory=memory)
        observer = observe(deployment.name) if observe else None
        quantize = quantization(deployment.weights, path, deployment.determinism)
        load = partial(load_chat_model, path, dtype=dtype, quantize=quantize, memory=memory)
        served[deployment.name] = ServedModel(AsyncEngine(load, configure, observer, threads=deployment.engine.threads))
    return served
