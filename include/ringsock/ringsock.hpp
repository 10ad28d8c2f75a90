// ringsock: header-only C++20 coroutines for Unix domain sockets on io_uring.
// Include this one header to get everything.
#pragma once

#include "acceptor.hpp"
#include "buffer.hpp"
#include "endpoint.hpp"
#include "error.hpp"
#include "io_context.hpp"
#include "io_result.hpp"
#include "op_limits.hpp"
#include "signal_set.hpp"
#include "stream_socket.hpp"
#include "task.hpp"
#include "timer.hpp"
#include "unique_fd.hpp"
#include "version.hpp"
