// seqpacket_acceptor: a listening SOCK_SEQPACKET Unix socket. The same class as the
// stream acceptor (basic_acceptor): mode from the first instant, stale file takeover,
// a live server's socket or a non-socket never touched, only our own node removed on
// close; accepted connections are seqpacket_sockets.
#pragma once

#include <sys/socket.h>

#include "acceptor.hpp"
#include "seqpacket_socket.hpp"

namespace ringsock {

/// A listening seqpacket socket on a path or abstract name.
using seqpacket_acceptor = basic_acceptor<seqpacket_socket, SOCK_SEQPACKET>;

}  // namespace ringsock
