"""CUDA kernels compiled by the system's C++ compiler and run on the CPU, for tests.

`ElementwiseKernel` and `RawKernel` take what cupy's classes of those names take, and call with
CuPy's semantics on NumPy arrays: an elementwise kernel's operation text, unchanged, runs for
every element of its arguments broadcast together (outputs in place, scalars cast to their
parameter's type and passed as values, `raw` arrays indexed linearly, `size=` for an all-raw
call); a raw kernel's source, unchanged, runs each block's threads as real threads
(tests/cuda_on_cpu.h). Each kernel is compiled once per argument types into a cache folder
($TRAINER_CUDA_ON_CPU_CACHE, else ~/.cache/trainer/cuda-on-cpu), keyed by a hash of what is
compiled. `namespace()` is a stand-in for the `cupy` module made of these and NumPy.

Stricter than CuPy where CuPy would fail silently on a GPU: a raw kernel's arguments must have
its parameters' exact types (CuPy passes a mismatched scalar's bytes as they are).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HEADER = Path(__file__).with_name("cuda_on_cpu.h")
FLAGS = ("-std=c++20", "-pthread", "-O1", "-fPIC", "-shared", "-ffp-contract=off")
C_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long",
           "uint32": "unsigned int", "uint64": "unsigned long long", "bool": "bool"}
DTYPES = {c: np.dtype(name) for name, c in C_TYPES.items()}
MAX_DIMS = 8  # as the header's
launches: Counter[str] = Counter()  # kernel name -> calls, for tests that a kernel did run


class CompileError(RuntimeError):
    """The compiler rejected a kernel: its message, as the compiler gave it."""


def compiler() -> str | None:
    """$CXX, else g++, else clang++ (None: none here)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "trainer" / "cuda-on-cpu"
    return Path(os.environ.get("TRAINER_CUDA_ON_CPU_CACHE") or default)


_loaded: dict[str, ctypes.CDLL] = {}


def library(source: str) -> ctypes.CDLL:
    """`source` compiled into a shared library and loaded (from the cache when it is there)."""
    cxx = compiler()
    if cxx is None:
        raise CompileError("no C++ compiler: set $CXX or install g++ or clang++")
    key = hashlib.sha256("\0".join((cxx, *FLAGS, HEADER.read_text(), source)).encode())
    name = key.hexdigest()[:24]
    if name not in _loaded:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        built = folder / f"{name}.so"
        if not built.exists():  # (another process may be compiling it too: its own files)
            code, partial = (folder / f"{name}.{os.getpid()}{ext}" for ext in (".cpp", ".tmp"))
            code.write_text(source)
            proc = subprocess.run([cxx, *FLAGS, "-I", str(HEADER.parent), "-o", str(partial),
                                   str(code)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise CompileError(f"{cxx} failed on {code}:\n{proc.stderr}")
            os.replace(code, folder / f"{name}.cpp")
            os.replace(partial, built)  # whole or absent, for a run that comes after
        _loaded[name] = ctypes.CDLL(str(built))
    return _loaded[name]


@dataclass(frozen=True)
class Param:
    """One parameter of an elementwise kernel, as CuPy's ParameterInfo reads it."""

    name: str
    ctype: str  # a placeholder (one letter: T) or a C type
    dtype: np.dtype | None  # None for a placeholder
    raw: bool
    is_const: bool

    @staticmethod
    def parse(text: str, is_const: bool) -> tuple[Param, ...]:
        params = []
        for item in filter(None, (s.strip() for s in text.split(","))):
            *words, type_name, name = item.split()
            if set(words) - {"raw"}:
                raise ValueError(f"unknown keyword in parameter {item!r}")
            dtype = None if len(type_name) == 1 else np.dtype(type_name)
            ctype = type_name if dtype is None else C_TYPES[dtype.name]
            params.append(Param(name, ctype, dtype, "raw" in words, is_const))
        return tuple(params)

    def dtype_in(self, types_: dict[str, np.dtype]) -> np.dtype:
        """This parameter's dtype, its placeholder's where it has one."""
        return types_[self.ctype] if self.dtype is None else self.dtype


class Arg(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("ndim", ctypes.c_longlong),
                ("shape", ctypes.c_longlong * MAX_DIMS), ("strides", ctypes.c_longlong * MAX_DIMS)]

    @staticmethod
    def of(a: np.ndarray) -> Arg:
        if a.ndim > MAX_DIMS:
            raise ValueError(f"at most {MAX_DIMS} dimensions, not {a.ndim}")
        return Arg(a.ctypes.data, a.ndim, (ctypes.c_longlong * MAX_DIMS)(*a.shape),
                   (ctypes.c_longlong * MAX_DIMS)(*a.strides))


class ElementwiseKernel:
    """cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=...) on NumPy
    arrays: see the module's docstring."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 preamble: str = "", **_: Any) -> None:
        self.in_params = Param.parse(in_params, True)
        self.out_params = Param.parse(out_params, False)
        self.params = self.in_params + self.out_params
        self.operation, self.name, self.preamble = operation, name, preamble
        self._functions: dict[tuple, Any] = {}

    def __call__(self, *args: Any, size: int = -1) -> Any:
        nin, nargs = len(self.in_params), len(self.params)
        if len(args) not in (nin, nargs):
            raise TypeError(f"{self.name} takes {nin} or {nargs} arguments, not {len(args)}")
        shape = self._shape(args, size)
        types_ = self._types(args)
        outs = list(args[nin:]) or [np.empty(shape, p.dtype_in(types_))
                                    for p in self.out_params]
        for out, p in zip(outs, self.out_params, strict=True):
            if not p.raw and out.shape != shape:
                raise ValueError(f"{self.name}: output {p.name} has shape {out.shape}, "
                                 f"not {shape}")
        result = outs[0] if len(outs) == 1 else tuple(outs)
        if 0 in shape:
            return result
        values = []  # kept alive through the call
        for a, p in zip([*args[:nin], *outs], self.params, strict=True):
            if not isinstance(a, np.ndarray):  # a scalar: its parameter's type, by value
                a = np.array(a, dtype=p.dtype_in(types_))
            elif not p.raw and a.shape != shape:
                a = np.broadcast_to(a, shape)
            values.append(a)
        scalars = tuple(not isinstance(a, np.ndarray) for a in args[:nin])
        kernel = self._compiled(tuple(sorted(types_.items())), scalars)
        launches[self.name] += 1
        kernel((Arg * len(values))(*map(Arg.of, values)), ctypes.c_longlong(int(np.prod(shape))))
        return result

    def _shape(self, args: tuple, size: int) -> tuple[int, ...]:
        """The loop's shape: the non-raw arrays broadcast together, or (size,) without any."""
        loop = [a.shape for a, p in zip(args, self.params, strict=False)
                if isinstance(a, np.ndarray) and not p.raw]
        if size != -1 and loop:
            raise ValueError("'size' can be used only if all of the arrays are 'raw'")
        if size == -1 and not loop:
            raise ValueError("Loop size is undecided")
        return (size,) if size != -1 else np.broadcast_shapes(*loop)

    def _types(self, args: tuple) -> dict[str, np.dtype]:
        """The placeholders' dtypes, from the arrays (outputs first), as CuPy decides them."""
        found: dict[str, np.dtype] = {}
        nin = len(self.in_params)
        for i in [*range(nin, len(args)), *range(nin)]:
            p, a = self.params[i], args[i]
            if not isinstance(a, np.ndarray):
                continue
            want = p.dtype if p.dtype is not None else found.setdefault(p.ctype, a.dtype)
            if a.dtype != want:
                raise TypeError(f"{self.name}: {p.name} is {a.dtype}, expected {want}")
        missing = {p.ctype for p in self.params if p.dtype is None} - set(found)
        if missing:
            raise TypeError(f"{self.name}: no array decides the type of {', '.join(missing)}")
        return found

    def _compiled(self, type_map: tuple, scalars: tuple[bool, ...]) -> Any:
        """The compiled kernel for these placeholder types and scalar inputs (made once)."""
        function = self._functions.get((type_map, scalars))
        if function is None:
            function = getattr(library(self.source(dict(type_map), scalars)), self.name)
            function.restype = None
            self._functions[type_map, scalars] = function
        return function

    def source(self, type_map: dict[str, np.dtype], scalars: tuple[bool, ...]) -> str:
        """The C++ of this kernel for these placeholder types and scalar inputs: CuPy's
        kernel (typedefs, preamble, a parameter per argument, one reference per element) as
        a loop over the elements."""
        head, body = [], []
        for k, p in enumerate(self.params):
            const = "const " if p.is_const else ""
            if k < len(scalars) and scalars[k]:
                head.append(f"{const}{p.ctype} {p.name} = _args[{k}].value<{p.ctype}>();")
            elif p.raw:
                head.append(f"const cuda_on_cpu::Raw<{const}{p.ctype}> {p.name}{{&_args[{k}]}};")
            else:
                body.append(f"{const}{p.ctype} &{p.name} = _args[{k}].at<{p.ctype}>(i);")
        typedefs = "".join(f"typedef {C_TYPES[t.name]} {name};\n" for name, t in type_map.items())
        return (f'#include "cuda_on_cpu.h"\n{typedefs}{self.preamble}\n'
                f'extern "C" void {self.name}(const cuda_on_cpu::Arg* _args, long long _size) {{\n'
                + "".join(f"  {line}\n" for line in head)
                + "  const cuda_on_cpu::Indexer _ind{_size};\n"
                "  for (std::ptrdiff_t i = 0; i < _size; ++i) {\n"
                + "".join(f"    {line}\n" for line in body)
                + f"{self.operation}\n  }}\n}}\n")


class RawKernel:
    """cupy.RawKernel(code, name) on NumPy arrays: kernel(grid, block, args) runs `code`'s
    `extern "C" __global__ void name(...)` on grid x block threads (tests/cuda_on_cpu.h)."""

    def __init__(self, code: str, name: str, **_: Any) -> None:
        self.code, self.name = code, name
        match = re.search(rf'extern\s+"C"\s+__global__\s+void\s+{name}\s*\(([^)]*)\)', code)
        if match is None:
            raise ValueError(f'no extern "C" __global__ void {name}(...) in the code')
        typedefs = dict((new, old) for old, new in re.findall(r"typedef\s+([\w ]+?)\s+(\w+);",
                                                               code))
        self.params: list[tuple[str, str, np.dtype]] = []  # (C type, name, dtype pointed at)
        for item in (s.strip() for s in match.group(1).split(",")):
            ctype, pname = re.fullmatch(r"(.*?)\s*(\w+)", item).groups()
            base = re.sub(r"\bconst\b|\*", " ", ctype).split()
            base_type = " ".join(base)
            self.params.append((ctype, pname, DTYPES[typedefs.get(base_type, base_type)]))

    def __call__(self, grid: tuple[int, ...] | int, block: tuple[int, ...] | int,
                 args: tuple, **_: Any) -> None:
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, not {len(args)}")
        keep = []
        for (ctype, pname, dtype), a in zip(self.params, args, strict=True):
            pointer = "*" in ctype
            if not (isinstance(a, np.ndarray if pointer else np.generic) and a.dtype == dtype):
                what = f"{dtype} array" if pointer else f"numpy {dtype} scalar"
                raise TypeError(f"{self.name}: {pname} ({ctype}) needs a {what}, got "
                                f"{type(a).__name__} {getattr(a, 'dtype', '')}")
            keep.append(ctypes.c_void_p(a.ctypes.data) if pointer else np.array(a))
        addresses = [ctypes.addressof(k) if isinstance(k, ctypes.c_void_p) else k.ctypes.data
                     for k in keep]
        dims = [*_dim3(grid), *_dim3(block)]
        if dims[3] * dims[4] * dims[5] > 1024:
            raise ValueError(f"{self.name}: more than 1024 threads in a block")
        launches[self.name] += 1
        self.launcher(*dims, (ctypes.c_void_p * len(keep))(*addresses))

    @functools.cached_property
    def launcher(self) -> Any:
        """The compiled kernel's launch: (grid x, y, z, block x, y, z, argument pointers)."""
        passed = ", ".join(f"cuda_on_cpu::param<{ctype}>(_params, {k})"
                           for k, (ctype, _, _) in enumerate(self.params))
        source = ('#define CUDA_ON_CPU_BLOCKS\n#include "cuda_on_cpu.h"\n'
                  f"{self.code}\n"
                  'extern "C" void cuda_on_cpu_launch(unsigned gx, unsigned gy, unsigned gz, '
                  "unsigned bx, unsigned by, unsigned bz, void* const* _params) {\n"
                  "  cuda_on_cpu::launch({gx, gy, gz}, {bx, by, bz}, [=] {\n"
                  f"    {self.name}({passed});\n  }});\n}}\n")
        function = library(source).cuda_on_cpu_launch
        function.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p]
        function.restype = None
        return function


def _dim3(dims: tuple[int, ...] | int) -> tuple[int, int, int]:
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return (*dims, *(1,) * (3 - len(dims)))  # type: ignore[return-value]
