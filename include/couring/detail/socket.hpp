#pragma once

// Small synchronous socket helpers. None of these block: they set up sockets,
// the waiting (accept, connect, send, recv) is io_uring's.

#include <couring/endpoint.hpp>
#include <couring/result.hpp>

namespace couring::detail {

// A new stream socket for family, close-on-exec.
result<int> open_stream_socket(int family) noexcept;
result<void> set_socket_flag(int fd, int level, int option, bool on) noexcept;
result<void> bind_socket(int fd, const endpoint& local) noexcept;
result<endpoint> socket_name(int fd, bool peer);
// connect(2) right away: for datagram sockets, where it only sets the peer.
result<void> connect_socket(int fd, const sockaddr* addr, socklen_t len) noexcept;
result<void> socket_name_raw(int fd, bool peer, sockaddr_storage& out, socklen_t& len) noexcept;
// An int option's value (for tests and getters).
result<int> get_socket_int(int fd, int level, int option) noexcept;
result<void> set_socket_int(int fd, int level, int option, int value) noexcept;

} // namespace couring::detail
