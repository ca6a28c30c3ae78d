#pragma once

// tcp_stream: a connected TCP socket. Reading, writing, ordering and closing
// are those of every stream (stream.hpp); this adds connecting and TCP's
// own options.

#include <chrono>
#include <optional>
#include <string_view>
#include <vector>

#include <couring/detail/connect_awaitable.hpp>
#include <couring/endpoint.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>
#include <couring/task.hpp>

namespace couring {

struct connect_options {
  std::optional<endpoint> local; // bind here before connecting (the seed's client does);
                                 // a name then resolves to that family only
  bool reuse_address = true;     // SO_REUSEADDR on that bind, so a rerun can reuse the port
  bool no_delay = false;         // TCP_NODELAY
  // Happy Eyeballs: how long an attempt runs alone before the next starts.
  std::chrono::milliseconds attempt_delay{250};
};

class tcp_stream : public stream {
public:
  tcp_stream() noexcept = default;
  // Adopts fd, a connected TCP socket; closes it when destroyed.
  tcp_stream(io_context& ctx, int fd) : stream(ctx, fd, kind::socket) {
    handle_.state()->zero_copy_capable = true;
  }
  // Adopts slot, a direct descriptor in ctx's file table (see is_direct()).
  tcp_stream(io_context& ctx, int slot, detail::direct_slot_t)
      : stream(ctx, slot, detail::direct_slot) {}

  // Opens a socket, binds it to options.local if given, and connects.
  static task<result<tcp_stream>> connect(io_context& ctx, endpoint remote,
                                          connect_options options = {});
  // "host:port" or "[v6]:port". A numeric address is connected to directly;
  // a name is resolved (resolve.hpp) and its addresses raced as RFC 8305
  // (Happy Eyeballs) says: families interleaved, each attempt started 250 ms
  // after the one before it -- or as soon as that one failed --, the first
  // connection wins and the others are cancelled and closed. Every attempt
  // failing gives the last attempt's error.
  static task<result<tcp_stream>> connect(io_context& ctx, std::string_view host_and_port,
                                          connect_options options = {});
  // The same race over addresses already resolved, in the order given
  // (connect(ctx, "host:port") interleaves the families first).
  static task<result<tcp_stream>> connect_any(io_context& ctx, std::vector<endpoint> remotes,
                                              connect_options options = {});

  using connect_awaitable = detail::connect_awaitable<endpoint>;

  result<endpoint> local_endpoint() const;
  result<endpoint> remote_endpoint() const;
  result<void> set_no_delay(bool on) noexcept;
};

} // namespace couring
