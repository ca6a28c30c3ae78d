#pragma once

// tcp_stream: a connected TCP socket. Reading, writing, ordering and closing
// are those of every stream (stream.hpp); this adds connecting and TCP's
// own options.

#include <optional>

#include <couring/detail/connect_awaitable.hpp>
#include <couring/endpoint.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>
#include <couring/task.hpp>

namespace couring {

struct connect_options {
  std::optional<endpoint> local; // bind here before connecting (the seed's client does)
  bool reuse_address = true;     // SO_REUSEADDR on that bind, so a rerun can reuse the port
  bool no_delay = false;         // TCP_NODELAY
};

class tcp_stream : public stream {
public:
  tcp_stream() noexcept = default;
  // Adopts fd, a connected TCP socket; closes it when destroyed.
  tcp_stream(io_context& ctx, int fd) : stream(ctx, fd) {}

  // Opens a socket, binds it to options.local if given, and connects.
  static task<result<tcp_stream>> connect(io_context& ctx, endpoint remote,
                                          connect_options options = {});

  using connect_awaitable = detail::connect_awaitable<endpoint>;

  result<endpoint> local_endpoint() const;
  result<endpoint> remote_endpoint() const;
  result<void> set_no_delay(bool on) noexcept;
};

} // namespace couring
