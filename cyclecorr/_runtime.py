"""Process-level settings for long CPU jobs.

:func:`keep_freed_memory` tells glibc's allocator to keep freed memory in the process instead of
handing it back to the kernel. A training step allocates and frees the same large activations
(30 × 32 × 128 × 128 floats is 63 MB) every iteration; by default glibc serves every block above
32 MB (less for smaller blocks, by its dynamic threshold) with a fresh ``mmap`` and returns it
with ``munmap`` when freed, so each step page-faults and zero-fills its activations again: about
130,000 minor page faults and 0.3–0.4 s of kernel time per cycle step of the paper network at
batch 10 on 2 cores (``bench/train_step.py``, variant ``keepmem``). With the setting the heap
grows to the step's peak once and is reused. PyTorch's CPU performance guide reaches the same end
by preloading jemalloc or tcmalloc; this needs no extra library.

Only the calling process is affected, it is a no-op (returning False) outside glibc, and it never
changes results: it decides where freed memory goes, not what is computed.

:data:`PRECISIONS` / :func:`precision_context` are the arithmetic precisions a network forward
runs in (inference: ``Matcher``, ``cyclecorr evaluate|match --precision``; training:
``runtime.precision``), and :func:`cpu_has_bf16` says whether bf16 is native on this CPU.
:func:`resolve_device` turns a device name (``"auto"``, ``"cpu"``, ``"cuda"``, …) into a
``torch.device``, for inference and training alike.

:func:`exit_with_parent` makes a worker process end itself when the process that started it dies
(even by SIGKILL, which gives the parent no chance to stop its pools).

torch is imported inside the functions: the command line reads :data:`PRECISIONS` from here to
build its argument parser, before any command needs torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
import time

__all__ = ["keep_freed_memory", "PRECISIONS", "precision_context", "cpu_has_bf16", "resolve_device",
           "exit_with_parent"]

#: Precisions of a network forward: ``"float32"`` (the default, the paper's, and the evaluation
#: protocol) or ``"bf16"`` (the network under ``torch.autocast(bfloat16)``; the network returns
#: float32). On the project's AVX-512 CPU bf16 ran the matcher 1.9× faster and moved the shipped
#: car model's headline PCK by at most 0.001 (docs/RESULTS.md); without bf16 hardware it is
#: emulated and much slower.
PRECISIONS = ("float32", "bf16")


def precision_context(device, precision: str):
    """The context a network forward on ``device`` runs in for ``precision`` (see
    :data:`PRECISIONS`; anything else is a ``ValueError``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return contextlib.nullcontext()
    import torch  # on use: see the module docstring

    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_device(device="auto"):
    """``"auto"`` → CUDA when available, else CPU; any other name or ``torch.device`` as given,
    checked: a name torch does not know, or a device this machine does not have (``cuda`` without
    a GPU, ``cuda:3`` with one, ``mps`` off a Mac), is a ``ValueError`` saying so."""
    import torch  # on use: see the module docstring

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device {device!r}: not a device name (auto, cpu, cuda, cuda:N, …)"
                         ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use "
                             f"cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        avail = getattr(getattr(torch, dev.type, None), "is_available", None)
        if avail is None or not avail():
            raise ValueError(f"device {device!r}: not available on this machine")
    return dev


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16, AMX, …) rather than emulated."""
    import torch  # on use: see the module docstring

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` per large block, no trimming).

    Returns True when the allocator accepted both settings (Linux with glibc), False otherwise;
    calling it again returns the first answer."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return _done
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # trim threshold first (2 GiB, about the largest int): the heap keeps up to that much free
    # memory on top; then no mmap. (The other order left some blocks unmapped on free in a test.)
    ok = mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
    _done = bool(ok)
    return _done


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> threading.Thread:
    """In a worker process: end this process (``os._exit(1)``) within ``interval`` seconds of
    the death of ``parent_pid``, the process that started it.

    A pool's workers wait for tasks on a pipe whose writing end they hold themselves, so a parent
    killed with SIGKILL leaves them blocked forever (with their memory). A daemon thread polls
    ``os.getppid()``: when the parent dies the worker is re-parented (to init or a sub-reaper) and
    the id changes. Returns the thread."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(interval)

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t
