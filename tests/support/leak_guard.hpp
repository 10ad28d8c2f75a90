// A test case's own proof that it leaked no descriptor: declare the guard first, so it
// is destroyed last, after every socket and context of the case.
#pragma once

#include <catch2/catch.hpp>

#include <cstddef>

#include "fd_count.hpp"

namespace ringsock::test {

class fd_leak_guard {
public:
    fd_leak_guard() : before_(open_fd_count()) {}
    fd_leak_guard(const fd_leak_guard&) = delete;
    fd_leak_guard& operator=(const fd_leak_guard&) = delete;
    ~fd_leak_guard() { CHECK(open_fd_count() == before_); }

private:
    std::size_t before_;
};

}  // namespace ringsock::test
