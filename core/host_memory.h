// How the process's host allocator treats the large, short-lived tensors of a training step. LibTorch's CPU
// allocator is plain malloc: glibc serves blocks above its mmap threshold with fresh mappings and returns freed
// heap tops to the system, so every step's activations (several MB each) were faulted in page by page again;
// bench_moe measured 2.9x fewer page faults and a 30% faster FFN-level MoLE step once freed memory stays in
// the heap for the next step. Memory is then held at the peak of a step, as a caching allocator would hold it.
#pragma once

namespace mole {

// Keeps freed memory in the heap for reuse (glibc: mmap threshold 1 GiB or the most glibc takes, no trimming, a
// 64 MiB top pad); elsewhere
// nothing. MOLE_MALLOC_DEFAULT=1 leaves the C library's defaults. Call once at start-up.
void keep_freed_host_memory();

}  // namespace mole
