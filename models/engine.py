"""Where a model's forward pass runs: the TensorFlow graph, or LiteRT with XNNPACK on CPU.

On a CPU the TensorFlow graph of EfficientNet-Lite0 is several times slower than the same
weights converted to a LiteRT flatbuffer and run by XNNPACK (fp32, identical outputs up to
float rounding), so ``auto`` picks LiteRT when TensorFlow sees no GPU and keeps the graph on a
GPU, where XNNPACK cannot follow. The conversion (≈ 10 s for the image model) is done once per
artifact content and cached on disk; the cache key includes the TensorFlow version that
converted it.

Both runners take and return numpy arrays, accept any batch size and are safe to call from
the inference thread after being built (and warmed) on another.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import structlog

from models.paths import CACHE_DIR

log = structlog.get_logger(__name__)

ENGINES = ("auto", "tensorflow", "litert", "litert-int8")
ENGINE_ENV = "SHELVER_INFERENCE_ENGINE"
DEFAULT_CACHE = CACHE_DIR / "litert"  # models.paths: the checkout's .cache, or the user's cache when installed
INT8_FILE = "image_model.int8.tflite"  # training/quantize.py writes it into the artifact folder
# The 8-bit model's softmax comes in steps of 1/256: any probability under half a step reads as exactly 0.
# The geometric ensemble takes logs, so an exact 0 (floored at 1e-12) vetoed that class whatever the text
# said, where the fp32 model only weighs it down; half a step is the most such a class can have had.
INT8_FLOOR = 1.0 / 512


def int8_distributions(raw: np.ndarray) -> np.ndarray:
    """Rows of the 8-bit model's softmax as distributions: zeros raised to half a quantization step, rows
    renormalized (they also sum to 0.93-1.0)."""
    p = np.maximum(np.asarray(raw, dtype=np.float64), INT8_FLOOR)
    return p / p.sum(axis=-1, keepdims=True)
INT8_REPORT = "quantization.json"  # ... with its measurements against fp32
# The vector extensions an 8-bit XNNPACK kernel's speed depends on (x86 VNNI/AVX-512/AMX, Arm dot products).
INT8_EXTENSIONS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def resolve_engine(requested: str | None, gpu_available: bool, int8_ok: bool = False) -> str:
    """``auto`` → ``tensorflow`` with a GPU; without one ``litert-int8`` where ``int8_ok`` (the artifact's
    8-bit image model was measured faster and as accurate on a CPU like this one, `int8_accepted`),
    else ``litert``; explicit choices are kept."""
    choice = (requested or "auto").strip().lower()
    if choice not in ENGINES:
        raise ValueError(f"inference engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    if choice == "auto":
        return "tensorflow" if gpu_available else ("litert-int8" if int8_ok else "litert")
    return choice


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:  # pragma: no cover - not Linux
        pass
    return set()


def vector_extensions(flags: set[str]) -> list[str]:
    """The int8-relevant extensions among ``flags``, in `INT8_EXTENSIONS` order."""
    return [f for f in INT8_EXTENSIONS if f in flags]


def int8_accepted(report: dict | None, flags: set[str]) -> bool:
    """True when ``report`` (an artifact's quantization.json) accepted the 8-bit image model and this CPU
    has every int8-relevant extension the measuring CPU had (the speed-up rests on them)."""
    if not report or not report.get("accepted"):
        return False
    return set(report.get("cpu", {}).get("vector_extensions", ["unknown"])) <= flags


def cpu_threads() -> int:
    """Threads for XNNPACK: the cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def content_key(paths: Iterable[Path], *extra: str) -> str:
    """A short hash of files' bytes (folders: every file below them, sorted) and extra strings."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:20]


def tensorflow_runner(model, input_spec) -> Callable[[np.ndarray], np.ndarray]:
    """One traced graph for every batch size (no retracing); runs on the GPU when TensorFlow has one."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), input_signature=[input_spec])
    return lambda x: fn(tf.convert_to_tensor(x, input_spec.dtype)).numpy()


def convert_to_litert(model, cache_dir: Path | None, key: str) -> bytes:
    """The Keras model as a LiteRT flatbuffer (fp32, builtin ops only), cached as ``<key>.tflite``."""
    path = (cache_dir / f"{key}.tflite") if cache_dir else None
    if path is not None and path.exists():
        return path.read_bytes()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Builtin ops only: the ai-edge-litert wheel has no TensorFlow (flex) kernels.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(flatbuffer)
            tmp.replace(path)  # atomic: concurrent instances never read half a file
        except OSError as exc:  # a read-only checkout still serves, it just converts again next time
            log.warning("litert_cache_not_written", path=str(path), error=str(exc))
    return flatbuffer


def chunk_rows(rows: int, workers: int, min_rows: int = 4) -> list[slice]:
    """Split a batch into chunks for ``workers`` interpreters: as many rows per worker as possible alike.

    Two chunks per worker once each would still hold ``min_rows``: a worker whose core is busy with
    other work (image fetches, Kafka, another process) then falls behind without holding the others
    at a barrier, which XNNPACK's intra-op threads do. Smaller batches get one chunk per worker. The
    chunk count is a multiple of the workers and sizes differ by one row at most, so no worker runs
    a round alone: 12 rows on 2 workers are 6 + 6, not 4 + 4 + 4 (measured 40 vs 49 ms).
    """
    if rows <= 0:
        return []
    workers = max(1, workers)
    if rows >= 2 * workers * min_rows:
        count = 2 * workers
    elif rows >= workers * min_rows:
        count = workers
    else:  # a small batch still uses every core it can
        count = min(workers, rows)
    size, extra = divmod(rows, count)
    bounds = [0]
    for k in range(count):
        bounds.append(bounds[-1] + size + (k < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _tasks() -> set[str]:
    """This process's threads (Linux task ids; empty elsewhere)."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        return set()


def _name_tasks(tids: Iterable[str], name: str) -> None:
    """Name threads as ``top -H`` and ``/proc`` show them (the kernel keeps 15 characters).

    Inference threads named ``litert…`` let an operator, and the benchmark's CPU accounting, tell
    them from the fetcher, the Kafka clients and the rest of the process.
    """
    for tid in tids:
        try:
            Path(f"/proc/self/task/{tid}/comm").write_text(name[:15])
        except OSError:  # pragma: no cover - not Linux, or the thread is gone
            pass


def _name_current_thread(name: str) -> None:
    _name_tasks([str(threading.get_native_id())], name)


class _Interpreter:
    """One LiteRT interpreter with XNNPACK, its input resized to each chunk's shape.

    Resizing re-plans the XNNPACK graph (about a millisecond for these models), cheaper than
    padding a small chunk up to a fixed size; the shape is only changed when it differs.
    """

    def __init__(self, flatbuffer: bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_content=flatbuffer, num_threads=threads)
        (inp,) = self._interp.get_input_details()
        (out,) = self._interp.get_output_details()
        self._in, self._out, self.dtype = inp["index"], out["index"], inp["dtype"]
        self._interp.allocate_tensors()  # starts XNNPACK's worker threads now (threads > 1), not at the first batch
        self._shape: tuple[int, ...] | None = tuple(inp["shape"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self._shape:
            self._interp.resize_tensor_input(self._in, x.shape, strict=False)
            self._interp.allocate_tensors()
            self._shape = x.shape
        self._interp.set_tensor(self._in, x)
        self._interp.invoke()  # releases the GIL: the other workers and the service's threads run meanwhile
        return self._interp.get_tensor(self._out)  # a copy: the next invoke cannot change it


class LiteRTRunner:
    """A batch's rows spread over one single-threaded interpreter per core (data parallel).

    Measured on 2 cores (benchmarks/run_all.py): as fast as one interpreter with 2 XNNPACK threads
    when the machine is idle, and faster when anything else runs, because a busy core delays only
    its own chunk instead of every layer of the whole batch. A batch too small to split (one
    product, at low load) runs on one more interpreter with intra-op threads on every core.
    """

    def __init__(self, flatbuffer: bytes, workers: int | None = None, wide: bool = False):
        self.workers = workers or cpu_threads()
        # wide: every batch on the one interpreter with intra-op threads on every core. The 8-bit image model
        # runs fastest so (its int8 kernels want whole batches: 452 against 372 images/s split in chunks of 8,
        # batch 32 on 2 idle cores; fp32 is as fast either way and chunks degrade better under load).
        self.wide_only = wide and self.workers > 1
        self.flatbuffer = flatbuffer  # the interpreters read their weights from it; kept for a rebuild
        interpreters = [_Interpreter(flatbuffer) for _ in range(1 if self.wide_only else self.workers)]
        self.dtype = interpreters[0].dtype
        self._free: queue.SimpleQueue[_Interpreter] = queue.SimpleQueue()
        for interp in interpreters:
            self._free.put(interp)
        self._pool, self._wide = None, None
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="litert",
                                            initializer=_name_current_thread, initargs=("litert",))
            before = _tasks()
            self._wide = _Interpreter(flatbuffer, threads=self.workers)
            # Its intra-op workers, started just now (a thread another part of the process starts in
            # these milliseconds, during a hot reload, would get the name too: a name, nothing more).
            _name_tasks(_tasks() - before, "litert-xnnpack")
            self._wide_lock = threading.Lock()

    def _run(self, x: np.ndarray) -> np.ndarray:
        interp = self._free.get()  # never waits long: at most `workers` chunks run at once per call
        try:
            return interp(x)
        finally:
            self._free.put(interp)

    def _run_wide(self, x: np.ndarray) -> np.ndarray:
        with self._wide_lock:
            return self._wide(x)

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x), dtype=self.dtype)
        parts = chunk_rows(len(x), self.workers)
        if self._pool is None:
            return self._run(x)
        if self.wide_only or len(parts) <= 1:  # on a pool thread too, so every interpreter runs on a thread named litert
            return self._pool.submit(self._run_wide, x).result()
        return np.concatenate(list(self._pool.map(self._run, (x[p] for p in parts))))


def make_runner(engine: str, model, input_spec, key: str, cache_dir: Path | None = DEFAULT_CACHE):
    """The forward pass of ``model`` on ``engine`` (already resolved: tensorflow or litert; the 8-bit image
    model is a flatbuffer of the artifact, run by `LiteRTRunner` directly)."""
    if engine == "tensorflow":
        return tensorflow_runner(model, input_spec)
    if engine in ("litert", "litert-int8"):  # litert-int8: the fp32 LiteRT path for what has no 8-bit model
        return LiteRTRunner(convert_to_litert(model, cache_dir, key))
    raise ValueError(f"unresolved engine {engine!r}")


def pad_columns(ids: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad [B, L] token ids to a multiple of ``multiple`` columns.

    Padding ids are masked out of the text model's mean, so results do not change, and the
    LiteRT interpreter sees a handful of shapes instead of re-planning for every batch.
    """
    extra = -ids.shape[1] % multiple
    return np.pad(ids, ((0, 0), (0, extra))) if extra else ids
