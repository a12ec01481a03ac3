"""Every CUDA kernel of the CuPy backend compiled with NVRTC, on a machine without a GPU.

`pip install ".[gpu-compile]"` brings CuPy and NVRTC (.ci/run installs it); elsewhere these
skip. An ElementwiseKernel's full source is produced through CuPy's private
`_get_elementwise_kernel_code`, known to work with the pinned CuPy version; with another
version the elementwise checks skip (the raw kernels are plain text and still compile).
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np
import pytest

from trainer.backends import cupy_kernels as ck

# .ci/run sets it where it installed the extra: there a check that cannot run is a failure
REQUIRED = bool(os.environ.get("TRAINER_REQUIRE_GPU_COMPILE"))


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"TRAINER_REQUIRE_GPU_COMPILE is set, but {reason}")
    pytest.skip(reason, allow_module_level=True)


try:
    import cupy
except ImportError:
    unavailable("the gpu-compile extra is not installed")
PINNED = "14.2.0"  # the CuPy whose private code generator these tests call
ARCHS = ("80", "90")
DTYPES = ("float32", "float64")


def nvrtc_options() -> tuple[str, ...]:
    from cupy._core import core

    return core.assemble_cupy_compiler_options(()) + ("--device-as-default-execution-space",
                                                      "-dlto")


def compile_source(source: str, arch: str) -> None:
    from cupy.cuda import compiler

    try:
        compiler.compile_using_nvrtc(source, options=nvrtc_options(), arch=arch, method="lto")
    except compiler.CompileException as e:
        pytest.fail(f"sm_{arch}: {e}")
    except Exception as e:  # NVRTC itself missing
        unavailable(f"NVRTC is unavailable: {type(e).__name__}: {e}")


def elementwise_source(spec: ck.Elementwise, dtype: str) -> str:
    """The source CuPy would compile for `spec` called on `dtype` arrays and its scalars."""
    if cupy.__version__ != PINNED:
        unavailable(f"the elementwise code generator is checked against CuPy {PINNED}, "
                    f"not {cupy.__version__}")
    from cupy._core import _carray, _kernel, _scalar, core

    kernel = cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation,
                                    spec.name, preamble=spec.preamble)
    placeholders = {"T": np.dtype(dtype).type, "C": np.int64}

    def dtype_of(param: object) -> type:
        return (np.dtype(param.dtype).type if param.dtype is not None
                else placeholders[param.ctype])

    ins = tuple(dtype_of(p) for p in kernel.in_params)
    outs = tuple(dtype_of(p) for p in kernel.out_params)
    _, _, type_map = kernel._decide_params_type(ins, outs)
    infos = [_kernel._ArgInfo(3, _scalar.CScalar, t, 0, True, True) if p.name in spec.scalars
             else _kernel._ArgInfo(1, cupy.ndarray, t, 2, True, True)
             for p, t in zip(kernel.in_params + kernel.out_params, ins + outs, strict=True)]
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, 2, True, True))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, kernel.params,
                                                kernel.operation, kernel.name,
                                                kernel.preamble, **kernel.kwargs)
    return "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + code


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ck.ELEMENTWISE, ids=lambda s: s.name)
def test_elementwise_kernel_compiles(spec: ck.Elementwise, dtype: str, arch: str) -> None:
    compile_source(elementwise_source(spec, dtype), arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ck.RAW, ids=lambda s: s.name)
def test_raw_kernel_compiles(spec: ck.Raw, dtype: str, arch: str) -> None:
    compile_source(ck.raw_source(spec, dtype), arch)


def test_a_typo_fails_the_compile() -> None:
    """The check can fail: a misspelled function in a kernel is a compile error, not a skip."""
    broken = ck.Elementwise("trainer_broken", "T b", "T z", "z = tnah(z + b);", "nothing")
    from cupy.cuda import compiler

    with pytest.raises(compiler.CompileException, match="tnah"):
        compiler.compile_using_nvrtc(elementwise_source(broken, "float32"),
                                     options=nvrtc_options(), arch="90", method="lto")


def test_every_kernel_names_its_reference() -> None:
    """Each spec says which function it mirrors, and that function exists."""
    import importlib

    for spec in (*ck.ELEMENTWISE, *ck.RAW):
        module, _, name = spec.mirrors.rpartition(".")
        if module == "RunningSums":
            from trainer.run.results import RunningSums

            assert hasattr(RunningSums, name)
            continue
        assert hasattr(importlib.import_module(f"trainer.core.{module}"), name), spec.name


def test_the_cupy_backend_imports_and_says_why_it_cannot_load() -> None:
    """With CuPy installed and no GPU: every module imports, the kernels can be built, and
    `trainer backends` gives the reason."""
    from typer.testing import CliRunner

    from trainer.backends import cupy as cupy_backend
    from trainer.cli.app import app

    kernels = ck.build(cupy)  # compiled only when first called: no device needed here
    assert set(kernels["bias_activate"]) == set(ck.BIAS_ACTIVATE)
    try:
        cupy_backend.load()
    except ImportError as e:
        reason = str(e)
    else:
        pytest.skip("a CUDA device is present: the GPU tests cover this backend")
    assert reason.startswith(f"cupy {cupy.__version__} ")
    result = CliRunner().invoke(app, ["backends"], terminal_width=200)
    assert result.exit_code == 0
    line = next(ln for ln in result.output.splitlines() if ln.strip("│ ").startswith("cupy"))
    assert "no" in line and f"cupy {cupy.__version__}" in line


def test_the_pinned_version_is_what_the_extra_installs() -> None:
    requires = importlib.metadata.metadata("trainer").get_all("Requires-Dist") or []
    assert any(r.startswith(f"cupy-cuda12x=={PINNED};") for r in requires), requires
