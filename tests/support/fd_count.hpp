// Counts this process's open descriptors, so tests can prove they leaked none.
#pragma once

#include <dirent.h>

#include <cstddef>
#include <stdexcept>

namespace ringsock::test {

/// Number of entries in /proc/self/fd, not counting the directory handle used to read it.
inline std::size_t open_fd_count() {
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) throw std::runtime_error("open_fd_count: cannot open /proc/self/fd");
    std::size_t n = 0;
    while (dirent* e = ::readdir(dir)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(dir);
    return n - 1;
}

}  // namespace ringsock::test
