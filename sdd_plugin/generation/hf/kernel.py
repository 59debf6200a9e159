"""The decode engine's one hand-written kernel: decode attention on CPU fp32 (``csrc/``).

It serves decode steps (one query a row) and prompt-lookup verification (a few causal queries a
row), each row reading exactly its own KV cache columns once. Hand-written because on CPU
neither PyTorch's flash-attention kernel, a batched GEMM nor inductor reads the cache near the
memory's speed when each (row, head) has a few queries against a few hundred keys.

The C source is built on first use with the system C compiler (``$CC``, else ``cc``) into the
cache (``kernels/``), keyed by a hash of the source, flags, compiler and CPU that is recorded
beside the library with the library's own hash; a cached library whose record does not match is
rebuilt, never loaded. It is loaded with :mod:`ctypes` and checked once against
``F.scaled_dot_product_attention``. No compiler, a failed build or a failed check leaves the
engine on SDPA (logged once). ``SDD_DECODE_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ...cache import cache_dir, cache_lock, file_hash, fingerprint, write_json_atomic

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.c"
#: compiler flags, tried in order: the first that builds is used (``-march=native`` first).
#: ``-fopenmp`` only where torch itself runs on GNU OpenMP (``libgomp.so.1`` is then already
#: loaded, and the kernel's threads are torch's); a second OpenMP runtime beside torch's would
#: spin against it, so otherwise the kernel uses POSIX threads.
FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
    ["-O3", "-march=native", "-fno-math-errno"],
    ["-O3", "-fno-math-errno"],
)
#: query rows per key/value head the kernel takes (query heads of the group x queries a row)
MAX_QUERY_ROWS = 64

_ERRORS = {
    1: "unsupported shape",
    2: "a row's columns (start column, stop column) outside the cache or shorter than the shared prefix",
    3: "out of memory",
}


def env_switch(name: str) -> bool:
    """False when the environment variable ``name`` is ``0``/``false``/``off``/``no``; on otherwise."""
    return os.environ.get(name, "1").strip().lower() not in {"0", "false", "off", "no"}


def kernel_enabled() -> bool:
    """False when ``SDD_DECODE_KERNEL`` is ``0``/``false``/``off``/``no``."""
    return env_switch("SDD_DECODE_KERNEL")


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


def _cpu_key() -> str:
    """The CPU's model and feature flags (``-march=native`` builds are per CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _torch_on_libgomp() -> bool:
    """Whether the loaded torch runs on GNU OpenMP (``libgomp``), read from the process's maps."""
    import torch  # noqa: F401  (its OpenMP runtime must be loaded before looking)

    names = {Path(path).name for path in openmp_runtimes()}
    # the kernel links libgomp.so.1: it reuses a loaded one of that name (vendored copies, such
    # as scikit-learn's libgomp-<hash>.so.1, have other names and do not count)
    return any(name.startswith("libgomp.so") for name in names) and not any(
        name.startswith(("libiomp5", "libomp.so")) for name in names
    )


def openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (empty where /proc is missing)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[-1] for line in lines if any(n in line for n in ("libgomp", "libomp", "libiomp"))}


def build_key(source: bytes, flags: list[str], compiler_version: str) -> str:
    """SHA-256 (hex) of what a build depends on: the C source, the flags, the compiler and the CPU."""
    parts = {"flags": flags, "compiler": compiler_version, "cpu": _cpu_key(), "machine": platform.machine()}
    return fingerprint({"source": source.decode("utf-8"), **parts}, 64)


def build_record(library: Path) -> Path:
    """The JSON file beside ``library`` that records its build key and the library's SHA-256."""
    return library.with_suffix(".json")


def _built_from(library: Path, key: str) -> bool:
    """Whether ``library`` exists and its record says it was built for ``key`` and has the bytes
    that build wrote."""
    try:
        record = json.loads(build_record(library).read_text(encoding="utf-8"))
        return record.get("build_key") == key and record.get("library_sha256") == file_hash(library, 64)
    except (OSError, ValueError, AttributeError):
        return False


def _compile(cc: str, flags: list[str], key: str, out: Path) -> str | None:
    """Compile the source with ``flags`` into ``out`` and record the build; the error, or None."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    cmd = [cc, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lpthread", "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        return f"{' '.join(cmd)}:\n{done.stderr.strip()[-2000:]}"
    digest = file_hash(tmp, 64)
    os.replace(tmp, out)  # atomic: a process loading the old library keeps its mapping
    write_json_atomic(build_record(out), {"build_key": key, "library_sha256": digest})
    return None


def build_decode_attention(compiler: str | None = None) -> Path:
    """Compile ``csrc/decode_attention.c`` into the cache (once) and return the shared library.

    A cached library is reused only when its build record matches this source, these flags,
    compiler and CPU, and the library's bytes; otherwise it is built again, under
    :func:`sdd_plugin.cache.cache_lock` (one build at a time)."""
    cc = compiler or _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC or install gcc/clang)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    source = SOURCE.read_bytes()
    errors = []
    openmp = _torch_on_libgomp()
    for flags in FLAG_SETS:
        if "-fopenmp" in flags and not openmp:
            continue
        key = build_key(source, flags, "".join(version))
        out = cache_dir() / "kernels" / f"decode_attention-{key[:16]}.so"
        if _built_from(out, key):
            return out
        with cache_lock(out):  # processes starting at once build it once; the others wait and load it
            if _built_from(out, key):
                return out
            error = _compile(cc, flags, key, out)
        if error is None:
            return out
        errors.append(error)
    raise RuntimeError("building the decode attention kernel failed:\n" + "\n".join(errors))


class DecodeAttention:
    """ctypes binding of ``sdd_decode_attention``: call it with ``[B, H, Q, D]`` queries."""

    def __init__(self, library: Path) -> None:
        self.library = library
        fn = ctypes.CDLL(str(library)).sdd_decode_attention  # CDLL: the GIL is released during calls
        p, i64, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        # q, k, v, out (pointer, batch stride, head stride); start, stop, shared, end, batch,
        # kv_heads, group, queries, dim, scale, threads
        fn.argtypes = [p, i64, i64] * 4 + [p, p, i64, i64, i64, i32, i32, i32, i32, ctypes.c_float, i32]
        fn.restype = i32
        self._fn = fn

    @staticmethod
    def fits(group: int, q_len: int, dim: int) -> bool:
        """Whether ``group`` query heads per key/value head, ``q_len`` queries a row and head
        size ``dim`` fit the kernel."""
        return group * q_len <= MAX_QUERY_ROWS and dim % 8 == 0

    @staticmethod
    def supports(query, key, value) -> bool:
        """Whether ``[B, KVH*G, Q, D]`` queries and ``[B, KVH, L, D]`` keys/values fit the kernel."""
        import torch

        batch, heads, q_len, dim = query.shape
        kv_heads = key.shape[1]
        return (
            query.dtype == key.dtype == value.dtype == torch.float32
            and query.device.type == key.device.type == value.device.type == "cpu"
            and heads % kv_heads == 0
            and DecodeAttention.fits(heads // kv_heads, q_len, dim)
            and key.shape == value.shape
            and key.stride(3) == value.stride(3) == 1
            and key.stride(2) == value.stride(2) == dim
        )

    def __call__(
        self,
        query,
        key,
        value,
        first_columns,
        scaling: float | None = None,
        stop_columns=None,
        shared_columns: int = 0,
    ):
        """Attention of ``[B, H, Q, D]`` queries on ``[B, KVH, L, D]`` keys/values; returns
        ``[B, H, Q, D]``. Query ``i`` of row ``b`` attends exactly the columns
        ``[first_columns[b], stop_columns[b] + i)``; without ``stop_columns`` the row's ``Q`` new
        tokens are the last ``Q`` columns (``stop = L - Q + 1``). ``shared_columns`` > 0 promises
        that every row's first ``shared_columns`` columns equal row 0's: they are read from row 0
        for every row (a prefix all prompts share then streams from memory once)."""
        import torch

        batch, heads, q_len, dim = query.shape
        kv_heads, end = key.shape[1], key.shape[2]
        group = heads // kv_heads
        # query head h uses key/value head h // group; [B, KVH, G * Q, D], row g * Q + i
        q = query.reshape(batch, kv_heads, group * q_len, dim).contiguous()
        starts = first_columns.to(device="cpu", dtype=torch.long).contiguous()
        stops = None if stop_columns is None else stop_columns.to(device="cpu", dtype=torch.long).contiguous()
        for name, cols in (("first_columns", starts), ("stop_columns", stops)):
            if cols is not None and cols.shape != (batch,):
                raise ValueError(f"{name} has shape {tuple(cols.shape)}, expected ({batch},)")
        out = torch.empty_like(q)
        code = self._fn(
            q.data_ptr(), q.stride(0), q.stride(1),
            key.data_ptr(), key.stride(0), key.stride(1),
            value.data_ptr(), value.stride(0), value.stride(1),
            out.data_ptr(), out.stride(0), out.stride(1),
            starts.data_ptr(), None if stops is None else stops.data_ptr(), int(shared_columns), end,
            batch, kv_heads, group, q_len, dim,
            dim**-0.5 if scaling is None else float(scaling), torch.get_num_threads(),
        )  # fmt: skip
        if code:
            raise RuntimeError(f"decode attention kernel: {_ERRORS.get(code, code)}")
        return out.reshape(batch, heads, q_len, dim)


def _self_check(kernel: DecodeAttention) -> bool:
    """The kernel against SDPA on deterministic inputs: odd lengths, groups of 3 and 5, a row
    with three columns, 3 causal queries a row ending at different columns, and a prefix of 2
    columns that every row shares."""
    import torch
    import torch.nn.functional as F

    cols = torch.arange(37)
    for group, dim, q_len, shared in ((3, 64, 1, 0), (5, 16, 1, 0), (3, 16, 3, 0), (3, 16, 1, 2)):
        n = torch.arange(4 * 2 * 37 * dim, dtype=torch.float32)
        key, value = n.sin().reshape(4, 2, 37, dim), n.cos().reshape(4, 2, 37, dim)
        starts = torch.tensor([0, 5, 34, 17])
        for row in range(1, 4):  # row 0's first columns, copied to every row's first columns
            c = int(starts[row])
            key[row, :, c : c + shared], value[row, :, c : c + shared] = (
                key[0, :, :shared],
                value[0, :, :shared],
            )
        query = torch.arange(4 * 2 * group * q_len * dim, dtype=torch.float32).mul(0.37).sin()
        query = query.reshape(4, 2 * group, q_len, dim)
        stops = torch.tensor([35, 30, 35, 21]) if q_len > 1 else None
        ends = (stops if stops is not None else torch.full((4,), 37)) + torch.arange(q_len)[:, None]  # [Q, B]
        mask = (cols[None, None] >= starts[None, :, None]) & (cols[None, None] < ends[:, :, None])
        mask = mask.permute(1, 0, 2)[:, None]  # [B, 1, Q, L]
        expect = F.scaled_dot_product_attention(
            query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), attn_mask=mask
        )
        got = kernel(query, key, value, starts, stop_columns=stops, shared_columns=shared)
        if not torch.allclose(got, expect, atol=1e-5, rtol=1e-4):
            return False
    return True


@functools.cache
def _load() -> DecodeAttention | None:
    try:
        kernel = DecodeAttention(build_decode_attention())
        if not _self_check(kernel):
            raise RuntimeError("its results differ from F.scaled_dot_product_attention")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.info("decode attention kernel unavailable, using SDPA: %s", exc)
        return None
    return kernel


def decode_attention_kernel() -> DecodeAttention | None:
    """The built, checked kernel, or None (disabled, no compiler, build or check failed)."""
    return _load() if kernel_enabled() else None
