// CUDA on the CPU, for tests: enough of CUDA's C++ to compile and run the CuPy backend's kernels
// (backends/cupy_kernels.py) with g++ or clang++ (-std=c++20 -pthread). tests/cuda_on_cpu.py
// writes each kernel's text, unchanged, after this header and loads the result with ctypes.
//
// - __global__ and __device__ functions are plain functions.
// - A launch runs a block's threads as real threads (the blocks one after another), each with
//   its own threadIdx/blockIdx (thread_local); __syncthreads() is a std::barrier of the block,
//   so a missing barrier races as on a GPU. A thread that returns drops out of the barrier.
// - __shared__ storage is a static local: one copy, shared by the block's threads (blocks run
//   one at a time, so one copy is enough). Its bytes are set to 0xff (NaN, -1) before each
//   block, so a read before the write that a barrier should have waited for shows.
// - CUDA's math functions are the C++ ones, overloaded on float and double as in CUDA.
// Not emulated: warps (no shuffles, votes or warp-synchronous code), atomics, streams.
#pragma once

#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

using std::exp;
using std::fabs;
using std::fmax;
using std::fmin;
using std::isinf;
using std::isnan;
using std::log;
using std::nan;
using std::sqrt;
using std::tanh;

namespace cuda_on_cpu {

constexpr int MAX_DIMS = 8;

// One argument of an elementwise kernel: an array (its elements' address from a linear index
// over its own shape, C order, byte strides: 0 along a broadcast axis) or a scalar's value.
struct Arg {
    char* data;
    long long ndim;
    long long shape[MAX_DIMS];
    long long strides[MAX_DIMS];

    template <class X> X& at(std::ptrdiff_t i) const {
        std::ptrdiff_t offset = 0;
        for (long long d = ndim - 1; d >= 0; --d) {
            offset += (i % shape[d]) * strides[d];
            i /= shape[d];
        }
        return *reinterpret_cast<X*>(data + offset);
    }
    template <class X> X value() const { return *reinterpret_cast<const X*>(data); }
};

// a `raw` parameter of an elementwise kernel, indexed as a CuPy CArray: by linear index
template <class X> struct Raw {
    const Arg* arg;
    X& operator[](std::ptrdiff_t i) const { return arg->template at<X>(i); }
};

// CuPy's `_ind`, for an operation that asks for the loop's size
struct Indexer {
    std::ptrdiff_t n;
    std::ptrdiff_t size() const { return n; }
};

// a raw kernel's parameter k, from CUDA's convention of an array of pointers to the values
template <class X> X param(void* const* params, int k) { return *static_cast<X*>(params[k]); }

}  // namespace cuda_on_cpu

#ifdef CUDA_ON_CPU_BLOCKS
#include <barrier>
#include <cstring>
#include <thread>
#include <vector>

// the linker's bounds of the section that __shared__ variables go to (null without any)
extern "C" __attribute__((weak)) char __start_cuda_on_cpu_shared[], __stop_cuda_on_cpu_shared[];

namespace cuda_on_cpu {

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local std::barrier<>* block_barrier = nullptr;

inline void syncthreads() { block_barrier->arrive_and_wait(); }

// kernel() on every thread of every block: a block's threads at once, on threads of their own
template <class Kernel> void launch(dim3 grid, dim3 block, Kernel kernel) {
    const unsigned int count = block.x * block.y * block.z;
    for (unsigned int b = 0; b < grid.x * grid.y * grid.z; ++b) {
        if (__start_cuda_on_cpu_shared != __stop_cuda_on_cpu_shared) {
            std::memset(__start_cuda_on_cpu_shared, 0xff,
                        __stop_cuda_on_cpu_shared - __start_cuda_on_cpu_shared);
        }
        std::barrier<> barrier(count);
        std::vector<std::thread> threads;
        threads.reserve(count);
        for (unsigned int t = 0; t < count; ++t) {
            threads.emplace_back([&, b, t] {
                threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
                blockIdx = {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
                blockDim = block;
                gridDim = grid;
                block_barrier = &barrier;
                kernel();
                barrier.arrive_and_drop();
            });
        }
        for (std::thread& thread : threads) thread.join();
    }
}

}  // namespace cuda_on_cpu

using cuda_on_cpu::blockDim;
using cuda_on_cpu::blockIdx;
using cuda_on_cpu::gridDim;
using cuda_on_cpu::threadIdx;
#define __shared__ static __attribute__((section("cuda_on_cpu_shared")))
#define __syncthreads() cuda_on_cpu::syncthreads()
#endif
