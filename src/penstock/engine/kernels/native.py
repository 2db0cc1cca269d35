"""Native CPU kernels: C sources shipped in the package, compiled for this CPU on first use.

One library holds them all: paged attention, the steps between a layer's matmuls (fused_decode.py),
and int4 and int8 matmuls for few rows (quant.py). Compiling takes a few seconds and the library is
kept under the user's cache directory, keyed by the sources, the flags and the CPU's feature flags.
Where no C compiler is found or compiling fails, every `load_*` returns None and the engine keeps its
PyTorch path, which is also the path on CUDA; the matmuls also need AVX-512 (BF16 for int4).
kernel_choice times the attention kernel against SDPA, and each layer's few-row kernel against its dense
matmul, before the engine uses them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
from torch import Tensor

log = structlog.get_logger("penstock.engine")
CSRC = Path(__file__).parent / "csrc"
# -march=native: the library is built on, and cached for, the CPU that runs it. No -ffast-math: in a
# shared library it would switch the whole process's floats to flush-to-zero.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
FUNCTIONS = {torch.float32: "paged_decode_f32", torch.bfloat16: "paged_decode_bf16"}
_ARGTYPES = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_void_p]


@dataclass(frozen=True, slots=True)
class QueryRows:
    """Every query of a step as the kernel reads it; int32 tensors, built once per step.

    A prefill chunk's queries share their sequence's block table and differ in how many keys each
    sees (causal: its own position and those before it).
    """

    rows: Tensor  # (n,) each query's token index in the step's flat batch
    block_tables: Tensor  # the sequences' block tables, concatenated
    table_starts: Tensor  # (n,) where each query's table starts in block_tables
    context_lens: Tensor  # (n,) keys each query sees, its own included

    @classmethod
    def build(cls, sequences: Iterable[tuple[Sequence[int], int, int]]) -> QueryRows:
        """From each sequence's (block table, first position in this step, tokens in this step), in batch order."""
        flat: list[int] = []
        starts: list[int] = []
        context_lens: list[int] = []
        for table, start, length in sequences:
            starts += [len(flat)] * length
            context_lens += range(start + 1, start + length + 1)
            flat += table
        rows = list(range(len(starts)))
        return cls(*(torch.tensor(x, dtype=torch.int32) for x in (rows, flat, starts, context_lens)))

    def __len__(self) -> int:
        return self.rows.numel()

    def pointers(self) -> tuple[int, int, int, int]:
        """rows, block_tables, table_starts, context_lens as a kernel takes them, in that order."""
        return (
            self.rows.data_ptr(),
            self.block_tables.data_ptr(),
            self.table_starts.data_ptr(),
            self.context_lens.data_ptr(),
        )


class AttentionKernel:
    """Attention of each query over its sequence's paged keys and values (csrc/paged_attention.c).

    A decode's query is read against its context alone; a prefill chunk's consecutive queries go in
    tiles, so each key and value read serves every query of the tile (csrc comments give the figures).
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._functions = {dtype: getattr(library, name) for dtype, name in FUNCTIONS.items()}
        for function in self._functions.values():
            function.argtypes = _ARGTYPES
            function.restype = ctypes.c_int

    def __call__(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, queries: QueryRows, out: Tensor) -> None:
        """q and out (tokens, n_heads, head_dim) fp32 contiguous; the caches one layer's blocks, contiguous."""
        _, block_size, n_kv, head_dim = k_cache.shape
        failed = self._functions[k_cache.dtype](
            q.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            *queries.pointers(),
            len(queries),
            q.shape[1],
            n_kv,
            head_dim,
            block_size,
            head_dim**-0.5,
            out.data_ptr(),
        )
        if failed:
            raise MemoryError("the attention kernel could not allocate its scratch memory")


@dataclass(frozen=True, slots=True)
class StepTensors:
    """What every layer of one step reads: RoPE's tables, the new tokens' cache slots, the queries."""

    cos: Tensor  # (rows, head_dim) fp32
    sin: Tensor
    slots: Tensor  # (rows,) int64
    queries: QueryRows


@dataclass(frozen=True, slots=True)
class LayerShape:
    dim: int
    hidden: int
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float


class LayerSteps:
    """The steps between a layer's int4 matmuls for few-row steps (csrc/decode_layer.c); see fused_decode.py.

    Tensors are CPU and contiguous; bf16 ones are what the int4 kernel reads and writes.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._add_rms_norm = library.add_rms_norm
        self._add_rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_float, ctypes.c_void_p]
        self._add_rms_norm.argtypes += [ctypes.c_int]
        self._add_rms_norm.restype = None
        self._rope_attend = {torch.float32: library.rope_attend_f32, torch.bfloat16: library.rope_attend_bf16}
        for function in self._rope_attend.values():
            function.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_void_p]
            function.restype = ctypes.c_int
        self._silu_mul = library.silu_mul
        self._silu_mul.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        self._silu_mul.restype = None
        self._decode_layers = {torch.float32: library.decode_layers_f32, torch.bfloat16: library.decode_layers_bf16}
        for function in self._decode_layers.values():
            function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 4
            function.argtypes += [ctypes.c_int64] + [ctypes.c_void_p] * 7 + [ctypes.c_int] * 6
            function.argtypes += [ctypes.c_float, ctypes.c_void_p]
            function.restype = ctypes.c_int

    def add_rms_norm(self, x: Tensor, delta: Tensor | None, weight: Tensor, eps: float, out: Tensor) -> None:
        """x (rows, dim) fp32 += delta (bf16, or None); out (bf16 or fp32) = rms_norm(x) · weight."""
        rows, dim = x.shape
        delta_ptr = None if delta is None else delta.data_ptr()
        bf16 = out.dtype == torch.bfloat16
        self._add_rms_norm(x.data_ptr(), delta_ptr, weight.data_ptr(), rows, dim, eps, out.data_ptr(), bf16)

    def rope_attend(
        self,
        qkv: Tensor,
        cos: Tensor,
        sin: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        slots: Tensor,
        queries: QueryRows,
        out: Tensor,
    ) -> None:
        """qkv (rows, (heads + 2 kv heads) · head_dim) bf16 → out (rows, heads · head_dim) bf16, with this
        step's keys and values written to one layer's caches at `slots` (int64) on the way."""
        _, block_size, n_kv, head_dim = k_cache.shape
        n_heads = out.shape[1] // head_dim
        failed = self._rope_attend[k_cache.dtype](
            qkv.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            slots.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            *queries.pointers(),
            len(queries),
            n_heads,
            n_kv,
            head_dim,
            block_size,
            head_dim**-0.5,
            out.data_ptr(),
        )
        if failed:
            raise MemoryError("the attention kernel could not allocate its scratch memory")

    def decode_layers(
        self,
        x: Tensor,
        weights: ctypes.Array[ctypes.c_void_p],
        final_norm: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        step: StepTensors,
        shape: LayerShape,
        out: Tensor,
    ) -> None:
        """Every layer at once (decode_layers in csrc/decode_layer.c): x (rows, dim) fp32, the residual
        stream, updated in place; out (rows, dim) fp32 its final norm. `weights`: 14 pointers per layer."""
        rows = x.shape[0]
        failed = self._decode_layers[k_cache.dtype](
            x.data_ptr(),
            rows,
            len(weights) // 14,
            weights,
            final_norm.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            k_cache[0].numel(),
            step.cos.data_ptr(),
            step.sin.data_ptr(),
            step.slots.data_ptr(),
            *step.queries.pointers(),
            shape.dim,
            shape.hidden,
            shape.n_heads,
            shape.n_kv,
            shape.head_dim,
            k_cache.shape[2],
            shape.eps,
            out.data_ptr(),
        )
        if failed:
            raise MemoryError("the fused decode could not allocate its scratch memory")

    def silu_mul(self, gate_up: Tensor, out: Tensor) -> None:
        """gate_up (rows, 2 · hidden) bf16, gate first → out (rows, hidden) bf16 = silu(gate) · up."""
        rows, hidden = out.shape
        self._silu_mul(gate_up.data_ptr(), rows, hidden, out.data_ptr())


class Int4Matmul:
    """x·Wᵀ for a few rows against 4-bit weights with AVX-512 BF16 (csrc/int4_matmul.c; quant.pack_int4_bf16)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._function = library.int4_matmul
        self._function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 3
        self._function.argtypes += [ctypes.c_int, ctypes.c_void_p]
        self._function.restype = ctypes.c_int

    def __call__(self, x: Tensor, packed: Tensor, scales: Tensor, lows: Tensor) -> Tensor:
        """x (rows, in_features) bf16 contiguous → (rows, out_features) bf16."""
        rows, in_features = x.shape
        out_features = scales.shape[0] * scales.shape[2]
        out = torch.empty(rows, out_features, dtype=torch.bfloat16)
        failed = self._function(
            x.data_ptr(),
            rows,
            in_features,
            packed.data_ptr(),
            scales.data_ptr(),
            lows.data_ptr(),
            out_features,
            out.data_ptr(),
        )
        if failed:
            raise MemoryError("the int4 kernel could not allocate its scratch memory")
        return out


class Int8Matmul:
    """x·Wᵀ for a few fp32 rows against per-channel int8 weights with AVX-512 (csrc/int8_matmul.c)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._function = library.int8_matmul
        self._function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 2
        self._function.argtypes += [ctypes.c_int, ctypes.c_void_p]
        self._function.restype = None

    def __call__(self, x: Tensor, tiles: Tensor, scales: Tensor) -> Tensor:
        """x (rows, in_features) fp32 contiguous; tiles (out/16, in, 16) int8; scales (out,) fp32 → (rows, out) fp32."""
        rows, in_features = x.shape
        out = torch.empty(rows, scales.shape[0])
        self._function(
            x.data_ptr(), rows, in_features, tiles.data_ptr(), scales.data_ptr(), scales.shape[0], out.data_ptr()
        )
        return out


def load_attention_kernel() -> AttentionKernel | None:
    """The compiled attention kernel, or None where it cannot be built here (logged once)."""
    library = _library()
    return None if library is None else AttentionKernel(library)


def load_layer_steps() -> LayerSteps | None:
    """The compiled steps between a layer's int4 matmuls, or None where they cannot be built here."""
    library = _library()
    return None if library is None else LayerSteps(library)


def load_int4_matmul() -> Int4Matmul | None:
    """The native int4 kernel, or None where it cannot be built here or this CPU lacks AVX-512 BF16."""
    library = _library()
    if library is None or not library.int4_matmul_available():
        return None
    return Int4Matmul(library)


def load_int8_matmul() -> Int8Matmul | None:
    """The native int8 kernel, or None where it cannot be built here or this CPU lacks AVX-512."""
    library = _library()
    if library is None or not library.int8_matmul_available():
        return None
    return Int8Matmul(library)


def native_library() -> ctypes.CDLL | None:
    """The compiled library with the batch-invariant functions' signatures set, or None where it cannot be built."""
    library = _library()
    if library is not None:
        library.bi_linear.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        library.bi_linear.restype = ctypes.c_int
        library.bi_unpack.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        library.bi_unpack.restype = None
        library.bi_layers.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p] + [ctypes.c_void_p] * 3
        library.bi_layers.argtypes += [ctypes.c_int64] + [ctypes.c_void_p] * 3
        library.bi_layers.restype = ctypes.c_int
    return library


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.info("native_kernel_unavailable", reason="no C compiler (cc) on PATH")
        return None
    try:
        return ctypes.CDLL(str(_compiled(compiler)))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("native_kernel_unavailable", reason=str(exc)[:500])
        return None


def _compiled(compiler: str) -> Path:
    sources = sorted(CSRC.glob("*.c"))
    texts = [path.read_bytes() for path in sorted(CSRC.iterdir()) if path.suffix in (".c", ".h")]
    key = hashlib.sha256(b"\0".join([*texts, " ".join(FLAGS).encode(), compiler.encode(), _cpu_flags()]))
    target = _cache_dir() / f"penstock-kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(
            [compiler, *FLAGS, *map(str, sources), "-o", str(partial)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise subprocess.SubprocessError(f"{compiler} failed: {result.stderr}")
        partial.replace(target)  # atomic: two engines compiling at once both end with a whole library
        log.info("native_kernel_compiled", path=str(target))
    return target


def _cache_dir() -> Path:
    """The user's cache directory, or the temp directory where that cannot be written (a read-only home)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "penstock" / "kernels"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        return Path(tempfile.gettempdir()) / f"penstock-kernels-{os.getuid()}"


def _cpu_flags() -> bytes:
    try:
        lines = Path("/proc/cpuinfo").read_bytes().splitlines()
    except OSError:
        return b""
    return next((line for line in lines if line.startswith(b"flags")), b"")
