"""CuPy's fused CUDA kernels: their specs as plain data, and the kernel objects built from them.

At batch 32 a CuPy step is bound by kernel launches (5-10 us each), not by FLOPs, and cuBLAS
calls cannot be captured in a CUDA graph through CuPy, so fewer launches come from fusing. Each
spec names the reference function it mirrors; the GPU tests check each kernel against it, and
a CPU test compiles every spec with NVRTC (no GPU needed), so a typo fails CI. Nothing here
imports cupy at module level: the specs are readable, and testable, without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import HASH32_MULTIPLIER

BLOCK = 256  # threads of the one block that softmax_xent_t runs in (a power of two)


@dataclass(frozen=True)
class Elementwise:
    """A cupy.ElementwiseKernel: `T` is the array dtype, float32 or float64."""

    name: str
    in_params: str
    out_params: str
    operation: str
    mirrors: str  # the reference function (trainer's) that the GPU tests compare it with
    scalars: tuple[str, ...] = ()  # the parameters passed as Python scalars, not arrays
    preamble: str = ""


@dataclass(frozen=True)
class Raw:
    """A cupy.RawKernel; `T` is typedef'd to float or double before the source."""

    name: str
    source: str
    mirrors: str


def _bias_activate(name: str, expression: str, mirrors: str) -> Elementwise:
    """z = activation(z + b) in place, b broadcast over the rows (or columns) of z."""
    return Elementwise(f"trainer_{name}_bias", "T b", "T z",
                       f"const T x = z + b;\nz = {expression};", mirrors)


# the forward pass's bias add and activation in one launch: network.forward's z = a @ W + b,
# then activations.<name>
BIAS_ACTIVATE = {
    "sigmoid": _bias_activate("sigmoid", "(T)0.5 * tanh((T)0.5 * x) + (T)0.5",
                              "activations.sigmoid"),
    # NaN stays NaN, as in xp.maximum (a diverging run must show it)
    "relu": _bias_activate("relu", "(x > (T)0 || x != x) ? x : (T)0", "activations.relu"),
    "tanh": _bias_activate("tanh", "tanh(x)", "activations.tanh"),
    "identity": _bias_activate("identity", "x", "activations.identity"),
}


def _activate_grad(name: str, expression: str, mirrors: str, masked: bool) -> Elementwise:
    """g = activation'(a) * (g * dropout mask) in place, `expression` in terms of a and g."""
    if masked:
        return Elementwise(f"trainer_{name}_grad_masked", "T a, T mask", "T g",
                           f"g = g * mask;\ng = {expression};", mirrors)
    return Elementwise(f"trainer_{name}_grad", "T a", "T g", f"g = {expression};", mirrors)


_BACKWARDS = {  # activations.<name>_backward(a, g), from the activation's output a
    "sigmoid": "g * a * ((T)1 - a)",
    "tanh": "g * ((T)1 - a * a)",
    "relu": "a > (T)0 ? g : (T)0",  # as xp.where: a dropped gradient stays 0, even inf or NaN
    "identity": "g",
}
ACTIVATE_GRAD = {(name, masked): _activate_grad(name, e, f"activations.{name}_backward", masked)
                 for name, e in _BACKWARDS.items() for masked in (False, True)}

# optim.sgd over the flat buffers in one launch. Below `rest` the velocity is already updated
# (VelocityStep: inside the weight's GEMM); from `rest` on v = m v + g (optim.momentum); then
# w += v, or Nesterov's w += m v + g.
SGD_UPDATE = Elementwise(
    "trainer_sgd_update", "T g, T m, int64 rest, bool nesterov", "T v, T w",
    "if (i >= rest) v = m * v + g;\nw += nesterov ? m * v + g : v;", "optim.sgd",
    scalars=("m", "rest", "nesterov"))

# dropout.keep_mask with dropout.hash32 in uint32 arithmetic (its int64 masking is the same
# wrap-around): 1/(1-p) where the hash of (counter + key) clears the threshold, else 0
KEEP_MASK = Elementwise(
    "trainer_keep_mask", "int64 counter, uint32 key, uint32 threshold, T scale", "T mask",
    "unsigned int x = (unsigned int)counter + key;\n"
    f"x ^= x >> 16; x *= {HASH32_MULTIPLIER}u;\n"
    f"x ^= x >> 16; x *= {HASH32_MULTIPLIER}u;\n"
    "x ^= x >> 16;\n"
    "mask = x >= threshold ? scale : (T)0;", "dropout.keep_mask",
    scalars=("key", "threshold", "scale"))

# the running loss and correct count of an epoch (float64 on the device), both in one launch
ACCUMULATE = Elementwise(
    "trainer_accumulate", "raw T loss, raw C correct", "raw float64 sums",
    "sums[0] += (double)loss[0];\nsums[1] += (double)correct[0];", "RunningSums.add")

# losses.loss_and_delta's cross-entropy and metrics.hits on transposed logits (classes x n,
# C-contiguous), with the bias add before it, the labels picked as y_all[idx], and the bias
# gradient (the delta summed over the samples) after it: see ndkernels.softmax_xent_t, whose
# contract this is. One block, so that the sums come out in the same order every run.
SOFTMAX_XENT_T = Raw("trainer_softmax_xent_t", r"""
#define BLOCK """ + str(BLOCK) + r"""
extern "C" __global__ void trainer_softmax_xent_t(
        T* logits, const T* bias, const long long* y_all, const long long* idx, const T scale,
        const int classes, const int n, T* bias_grad, T* loss_out, long long* correct_out) {
    __shared__ double part_loss[BLOCK];
    __shared__ long long part_correct[BLOCK];
    double loss = 0.0;
    long long correct = 0;
    for (int col = threadIdx.x; col < n; col += BLOCK) {
        const long long label = y_all[idx[col]];
        T top = 0;
        bool has_nan = false;
        for (int c = 0; c < classes; ++c) {
            const T z = logits[c * n + col] + bias[c];
            logits[c * n + col] = z;
            if (z != z) has_nan = true;
            if (c == 0 || z > top) top = z;
        }
        if (has_nan) top = (T)nan("");  // as numpy's max: one NaN logit makes the column NaN
        const T shifted = logits[label * n + col] - top;
        T sum = 0;
        for (int c = 0; c < classes; ++c) {
            const T e = exp(logits[c * n + col] - top);
            logits[c * n + col] = e;
            sum += e;
        }
        loss += (double)(log(sum) - shifted);
        correct += shifted == (T)0 ? 1 : 0;
        for (int c = 0; c < classes; ++c) {
            const T p = logits[c * n + col] / sum;
            logits[c * n + col] = scale * (p - (c == label ? (T)1 : (T)0));
        }
    }
    part_loss[threadIdx.x] = loss;
    part_correct[threadIdx.x] = correct;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            part_loss[threadIdx.x] += part_loss[threadIdx.x + half];
            part_correct[threadIdx.x] += part_correct[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        loss_out[0] = (T)part_loss[0];
        correct_out[0] = part_correct[0];
    }
    for (int c = threadIdx.x; c < classes; c += BLOCK) {
        T total = 0;
        for (int col = 0; col < n; ++col) total += logits[c * n + col];
        bias_grad[c] = total;
    }
}
""", "losses.loss_and_delta")

ELEMENTWISE: tuple[Elementwise, ...] = (*BIAS_ACTIVATE.values(), *ACTIVATE_GRAD.values(),
                                       SGD_UPDATE, KEEP_MASK, ACCUMULATE)
RAW: tuple[Raw, ...] = (SOFTMAX_XENT_T,)
CTYPES = {"float32": "float", "float64": "double"}


def raw_source(spec: Raw, dtype: str) -> str:
    """The CUDA source of a raw kernel for `dtype` ("float32" or "float64")."""
    return f"typedef {CTYPES[dtype]} T;\n{spec.source}"


def build(cupy: Any) -> dict[str, Any]:
    """The kernels as cupy objects (compiled on first use, for the dtypes they meet)."""
    def elementwise(spec: Elementwise) -> Any:
        return cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation,
                                      spec.name, preamble=spec.preamble)

    return {
        "bias_activate": {name: elementwise(s) for name, s in BIAS_ACTIVATE.items()},
        "activate_grad": {key: elementwise(s) for key, s in ACTIVATE_GRAD.items()},
        "sgd_update": elementwise(SGD_UPDATE),
        "keep_mask": elementwise(KEEP_MASK),
        "accumulate": elementwise(ACCUMULATE),
        "softmax_xent_t": {dtype: cupy.RawKernel(raw_source(SOFTMAX_XENT_T, dtype),
                                                 SOFTMAX_XENT_T.name)
                           for dtype in CTYPES},
    }
