#include "core/host_memory.h"

#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace mole {

void keep_freed_host_memory() {
  if (const char* keep_default = std::getenv("MOLE_MALLOC_DEFAULT"); keep_default && *keep_default == '1') return;
#if defined(__GLIBC__)
  // large blocks from the heap, where freed ones are reused (glibc caps the threshold: 32 MiB where 1 GiB is refused)
  if (mallopt(M_MMAP_THRESHOLD, 1 << 30) == 0) mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, -1);       // never hand the heap top back between steps (-1: no trimming)
  mallopt(M_TOP_PAD, 64 << 20);        // grow the heap in 64 MiB steps
#endif
}

}  // namespace mole
