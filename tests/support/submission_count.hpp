// Counting the requests a context hands to the kernel, for tests that pin down which
// operations go through the ring and which go direct.
#pragma once

#include <catch2/catch.hpp>

#include <ringsock/ringsock.hpp>

#include <liburing.h>

namespace ringsock::test {

/// SQEs this context has handed to the kernel so far (the SQ tail only grows).
inline unsigned sq_tail(io_context& ctx) { return *ctx.native_handle()->sq.ktail; }

/// The SQ tail once what the context prepared when it was made (its wake-up request)
/// has been handed to the kernel: what follows is the code under test's.
inline unsigned settled_sq_tail(io_context& ctx) {
    REQUIRE(io_uring_submit(ctx.native_handle()) >= 0);
    return sq_tail(ctx);
}

}  // namespace ringsock::test
