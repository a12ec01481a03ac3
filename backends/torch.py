"""PyTorch through array-api-compat: CPU, or CUDA with `--device cuda[:N]`."""

from __future__ import annotations

from typing import Any

from . import Backend, nop


def load(device: str | None = None) -> Backend:
    try:
        import torch
        from array_api_compat import torch as xp
    except ImportError as e:
        raise ImportError(f"torch is not installed ({e}); python -m pip install "
                          f"\".[torch]\" in the trainer checkout") from e
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, ValueError) as e:  # "banana": not a device string
        raise ValueError(f"torch: --device {device!r} is not a device: use cpu, cuda or "
                         f"cuda:N ({str(e).splitlines()[0]})") from None
    if dev.type not in ("cpu", "cuda"):  # meta, mps, ...: arrays this trainer cannot read back
        raise ValueError(f"torch: --device {device!r} is not supported: use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ImportError(f"torch {torch.__version__} sees no CUDA device")
    devices = ("cpu",) + tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))

    def asarray(a: Any) -> Any:
        return torch.from_numpy(a).to(dev)

    def to_numpy(a: Any) -> Any:
        return a.detach().cpu().numpy()

    cuda = dev.type == "cuda"

    def memory() -> tuple[int, int]:
        torch.cuda.empty_cache()  # what the caching allocator holds is free to us
        return torch.cuda.mem_get_info(dev)

    return Backend(
        name="torch", xp=xp, device=dev,
        device_name=torch.cuda.get_device_name(dev) if cuda else "cpu",
        version=torch.__version__, asarray=asarray, to_numpy=to_numpy,
        synchronize=torch.cuda.synchronize if cuda else nop, on_host=not cuda,
        memory=memory if cuda else None, devices=devices,
        memory_errors=(torch.cuda.OutOfMemoryError,),
    )
