// CUDA on the host: the keywords, built-ins and launch that let a kernel source run on
// the CPU, one std::thread per CUDA thread. The emulators in this folder include it:
// attention_emulator.cpp (the tensor-core attention kernels) and kernel_emulator.cpp (the
// kernels of any other source, e.g. kernels/layer_norm.cu).
//
// Every CUDA thread of a block is a std::thread; blocks run one after another, on the
// same threads.
// __syncthreads is a std::barrier over the block; the warp-wide operations meet at a
// std::barrier over their warp (32 consecutive threads of the block, x fastest).
// A `__shared__` array declared in a kernel becomes a function-local static: one array that
// every emulated thread sees, as a block's threads do (blocks run one at a time).
//
// What it cannot show:
// - a missing __syncthreads or a race: the threads do run at once, but the host's
//   scheduling and memory order are not a GPU's, so a race shows seldom if ever;
// - global-memory alignment: a misaligned float4 load does not fault on the host;
// - rounding that leans on the GPU's fused multiply-adds: the host build does not
//   contract a * b + c (C++ ISO mode, no -march with FMA), so each product is rounded.
#ifndef MINIVLM_CUDA_ON_HOST_H
#define MINIVLM_CUDA_ON_HOST_H

#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

// ---- CUDA keywords and built-ins the kernels use, as host C++ ---------------------------
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(threads)  // (__restrict__ g++ knows)
#define __shared__ static            // one array for the block's threads (see the top)

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
thread_local Dim3 threadIdx, blockIdx;  // set by each emulated thread when it starts
static Dim3 blockDim, gridDim;           // the launch's, the same for every thread
inline int thread_in_block() { return threadIdx.x + threadIdx.y * blockDim.x; }

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// reinterpret bits, as the CUDA intrinsics of the same names
template <typename To, typename From> inline To bit_cast_to(From value) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To result;
    std::memcpy(&result, &value, sizeof(To));
    return result;
}
inline float __int_as_float(int bits) { return bit_cast_to<float>(bits); }
inline float __uint_as_float(unsigned bits) { return bit_cast_to<float>(bits); }
inline double __longlong_as_double(long long bits) { return bit_cast_to<double>(bits); }
// IEEE operations rounded to nearest one at a time: the host build does not contract
// a * b + c into an FMA (C++ ISO mode, no -march with FMA), so the plain operations are
// already rounded so, and the square roots are IEEE's correctly rounded ones
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
// the kernel stops: the emulator exits with an error, as the launch would fail
inline void __trap() {
    std::fprintf(stderr, "__trap: the kernel stopped (too little shared memory?)\n");
    std::abort();
}

// ---- the block: its barrier and its shared memory ---------------------------------------
static std::unique_ptr<std::barrier<>> block_barrier;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }

// A `__shared__` array as a block finds it on a GPU, holding stale data: thread 0 fills it
// with all-ones bytes (NaN as a float, -1 as an int) and the block meets before any thread
// goes on. The emulators' builds put a call after each `__shared__` declaration, which every
// thread of a block reaches at its start.
template <typename Array> inline void emulated_stale_shared(Array& array) {
    if (thread_in_block() == 0) std::memset(&array, 0xff, sizeof(array));
    __syncthreads();
}

// `extern __shared__ float shared[]` becomes `float* shared = emulated_shared_memory;`
// and the %dynamic_smem_size register becomes emulated_dynamic_shared_bytes
static float* emulated_shared_memory;
static unsigned emulated_dynamic_shared_bytes;

// ---- the warp: a barrier each, and slots where its lanes leave values for each other ----
constexpr int WARP_SIZE = 32, MAX_WARPS = 32;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;

inline int lane_id() { return thread_in_block() % WARP_SIZE; }
inline int warp_id() { return thread_in_block() / WARP_SIZE; }
inline void warp_sync() { warp_barriers[warp_id()]->arrive_and_wait(); }

// __shfl_xor_sync: each lane writes its value, the warp meets, each lane reads lane ^ offset,
// the warp meets again before the slots are reused. The kernels shuffle within aligned
// groups of `width` lanes with offset < width, so lane ^ offset stays in the group.
// Slots hold up to 8 bytes: float, int or double.
static unsigned char shuffle_slots[MAX_WARPS][WARP_SIZE][8];
template <typename T> T __shfl_xor_sync(unsigned, T value, int offset, int width = WARP_SIZE) {
    static_assert(sizeof(T) <= sizeof(shuffle_slots[0][0]), "a shuffled value fits a slot");
    if (offset >= width) {
        std::fprintf(stderr, "__shfl_xor_sync: offset %d leaves a group of %d\n", offset, width);
        std::abort();
    }
    std::memcpy(shuffle_slots[warp_id()][lane_id()], &value, sizeof(T));
    warp_sync();
    T result;
    std::memcpy(&result, shuffle_slots[warp_id()][lane_id() ^ offset], sizeof(T));
    warp_sync();
    return result;
}

// __shfl_sync: the same exchange, each lane reading lane `source` of its aligned group of
// `width` lanes.
template <typename T> T __shfl_sync(unsigned, T value, int source, int width = WARP_SIZE) {
    static_assert(sizeof(T) <= sizeof(shuffle_slots[0][0]), "a shuffled value fits a slot");
    const int group_start = lane_id() / width * width;
    std::memcpy(shuffle_slots[warp_id()][lane_id()], &value, sizeof(T));
    warp_sync();
    T result;
    std::memcpy(&result, shuffle_slots[warp_id()][group_start + source % width], sizeof(T));
    warp_sync();
    return result;
}

// ---- launching ----------------------------------------------------------------------------
// Runs `kernel` on every block of the grid, one block at a time, with one std::thread per
// CUDA thread of a block: the same threads take the blocks in turn, meeting at a barrier of
// their own between blocks (not the one of __syncthreads, so a kernel whose threads leave
// early while others wait there deadlocks, as it would hang a GPU, instead of passing).
// Dynamic shared memory starts as NaN in every block, as stale data would.
// Blocks of one or two dimensions (block.z is 1), whole warps.
static void launch(Dim3 grid, Dim3 block, unsigned shared_bytes,
                   const std::function<void()>& kernel) {
    const int threads = static_cast<int>(block.x * block.y);
    if (block.z != 1 || threads <= 0 || threads % WARP_SIZE || threads > WARP_SIZE * MAX_WARPS) {
        std::fprintf(stderr, "a block of %u x %u x %u threads is not whole warps, at most 1024\n",
                     block.x, block.y, block.z);
        std::exit(2);
    }
    blockDim = block;
    gridDim = grid;
    emulated_dynamic_shared_bytes = shared_bytes;
    std::vector<float4> shared((shared_bytes + sizeof(float4) - 1) / sizeof(float4));
    emulated_shared_memory = reinterpret_cast<float*>(shared.data());
    block_barrier = std::make_unique<std::barrier<>>(threads);
    warp_barriers.clear();
    for (int warp = 0; warp < threads / WARP_SIZE; ++warp)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(WARP_SIZE));
    std::barrier<> between_blocks(threads);
    std::vector<std::thread> threads_of_block;
    for (int thread = 0; thread < threads; ++thread)
        threads_of_block.emplace_back([&, thread] {
            const unsigned index = static_cast<unsigned>(thread);
            threadIdx = {index % block.x, index / block.x, 0};
            for (unsigned block_y = 0; block_y < grid.y; ++block_y)
                for (unsigned block_x = 0; block_x < grid.x; ++block_x) {
                    if (thread == 0)  // NaN, then every thread starts the block together
                        std::memset(shared.data(), 0xff, shared.size() * sizeof(float4));
                    between_blocks.arrive_and_wait();
                    blockIdx = {block_x, block_y, 0};
                    kernel();
                    between_blocks.arrive_and_wait();  // the block is done in every thread
                }
        });
    for (std::thread& thread : threads_of_block) thread.join();
}

// ---- buffers: DIR/<name>.bin, raw little-endian values ------------------------------------
template <typename T> static std::vector<T> read_buffer(const std::string& dir,
                                                        const std::string& name) {
    const std::string path = dir + "/" + name + ".bin";
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        std::exit(2);
    }
    std::vector<T> values(static_cast<size_t>(file.tellg()) / sizeof(T));
    file.seekg(0);
    file.read(reinterpret_cast<char*>(values.data()), values.size() * sizeof(T));
    return values;
}

static void write_buffer(const std::string& dir, const std::string& name,
                         const std::vector<float>& values) {
    std::ofstream file(dir + "/" + name + ".bin", std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

#endif  // MINIVLM_CUDA_ON_HOST_H
