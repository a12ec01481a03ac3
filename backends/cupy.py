"""CuPy on a CUDA GPU; `--device N` picks the card."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import Backend, Kernels


def load(device: str | None = None) -> Backend:
    try:
        import cupy
        from array_api_compat import cupy as xp
    except ImportError as e:
        raise ImportError(
            f"cupy is not installed ({e}); python -m pip install \".[cuda12]\" (or "
            f"\".[cuda13]\") in the trainer checkout"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        raise ImportError(f"cupy {cupy.__version__} cannot use CUDA: {e}") from e
    if count == 0:
        raise ImportError(f"cupy {cupy.__version__} sees no CUDA device")
    index = int(str(device).removeprefix("cuda:")) if device not in (None, "cuda") else 0
    if not 0 <= index < count:
        raise ImportError(f"no CUDA device {index}: this machine has {count}")
    dev = cupy.cuda.Device(index)
    dev.use()
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]

    def asarray(a: Any) -> Any:
        with dev:
            return cupy.asarray(a)

    def memory() -> tuple[int, int]:
        with dev:
            cupy.get_default_memory_pool().free_all_blocks()  # CuPy's cached blocks are free
            return cupy.cuda.runtime.memGetInfo()

    with dev:
        kernels = _kernels(cupy)
    return Backend(
        name="cupy", xp=xp, device=dev,
        device_name=name.decode() if isinstance(name, bytes) else str(name),
        version=cupy.__version__, asarray=asarray, to_numpy=cupy.asnumpy,
        synchronize=dev.synchronize, on_host=False, memory=memory, scope=lambda: dev,
        devices=tuple(f"cuda:{i}" for i in range(count)), kernels=kernels,
        memory_errors=(cupy.cuda.memory.OutOfMemoryError,),
    )


def _kernels(cupy: Any) -> Kernels:
    """numpy-style buffer kernels (ndkernels), the fused CUDA kernels of cupy_kernels, and
    cuBLAS's GEMM with beta. The default config's step is 12 launches: see BENCHMARKS.md."""
    import cupy.cublas
    import numpy as np

    from . import cupy_kernels, ndkernels

    built = cupy_kernels.build(cupy)
    outputs: dict[str, tuple[Any, Any]] = {}  # softmax_xent_t's scalars, by dtype: reused

    def bias_activate(name: str, z: Any, b: Any) -> Any | None:
        kernel = built["bias_activate"].get(name)
        return None if kernel is None else kernel(b, z)

    def activate_grad(name: str, a: Any, g: Any, tmp: Any, mask: Any = None) -> Any | None:
        kernel = built["activate_grad"].get((name, mask is not None))
        if kernel is None:
            return None
        return kernel(a, g) if mask is None else kernel(a, mask, g)

    def softmax_xent_t(logits_t: Any, bias: Any, y_all: Any, idx: Any, scale: float,
                       bias_grad: Any) -> tuple[Any, Any, Any]:
        if not (logits_t.flags.c_contiguous and bias.flags.c_contiguous
                and bias_grad.flags.c_contiguous and idx.flags.c_contiguous):
            raise ValueError("softmax_xent_t needs contiguous logits, bias, gradient, indices")
        dtype = logits_t.dtype
        if dtype.name not in outputs:
            outputs[dtype.name] = (cupy.zeros((), dtype), cupy.zeros((), cupy.int64))
        loss, correct = outputs[dtype.name]
        classes, n = logits_t.shape
        built["softmax_xent_t"][dtype.name](
            (1,), (cupy_kernels.BLOCK,),
            (logits_t, bias, y_all.astype(cupy.int64, copy=False),
             idx.astype(cupy.int64, copy=False), dtype.type(scale), np.int32(classes),
             np.int32(n), bias_grad, loss, correct))
        return loss, correct, logits_t

    def sgd_update(w: Any, v: Any, g: Any, m: float, nesterov: bool, rest: int) -> None:
        built["sgd_update"](g, w.dtype.type(m), rest, nesterov, v, w)

    def keep_mask(counter: Any, key: int, p: float, dtype: Any) -> Any:
        mask = cupy.empty(counter.shape, dtype=dtype)
        built["keep_mask"](counter, np.uint32(key), np.uint32(int(p * 2**32)),
                           mask.dtype.type(1.0 / (1.0 - p)), mask)
        return mask

    def accumulate(sums: Any, loss: Any, correct: Any) -> None:
        built["accumulate"](loss, correct, sums, size=1)

    def gemm_acc(a: Any, b: Any, out: Any, alpha: float, beta: float) -> Any:
        return cupy.cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=beta)

    kernels = ndkernels.make(
        cupy, bias_activate=bias_activate, activate_grad=activate_grad,
        softmax_xent_t=softmax_xent_t, sgd_update=sgd_update, keep_mask=keep_mask,
        accumulate=accumulate, gemm_acc=gemm_acc)
    why = _gemm_acc_fails(cupy, gemm_acc)
    if why is not None:
        kernels = replace(kernels.without("gemm_acc"), dropped=(("gemm_acc", why),))
    return kernels


def _gemm_acc_fails(cupy: Any, gemm_acc: Any) -> str | None:
    """Why gemm_acc cannot be used (None: it works). Checks the layouts the step uses (a
    transposed view times a C-contiguous array or a transposed view, the latter for transposed
    logits) against cupy's matmul, in float32 and float64."""
    try:
        for dtype, rtol in ((cupy.float32, 1e-5), (cupy.float64, 1e-12)):
            a = cupy.arange(15, dtype=dtype).reshape(5, 3) / 7
            b = cupy.arange(20, dtype=dtype).reshape(5, 4) / 9
            for right in (b, cupy.ascontiguousarray(b.T).T):
                out = cupy.ones((3, 4), dtype=dtype)
                want = 0.5 * out - 2.0 * (a.T @ right)
                got = gemm_acc(a.T, right, out, -2.0, 0.5)
                if not bool(cupy.allclose(got, want, rtol=rtol)):
                    return f"{cupy.dtype(dtype).name} self-test: cuBLAS's result differs"
        return None
    except Exception as e:  # an old cupy without cupy.cublas.gemm, or a cuBLAS error
        return f"self-test failed: {type(e).__name__}: {e}"
