#pragma once

// tcp_stream: a connected TCP socket. Reading, writing, ordering and closing
// are those of every stream (stream.hpp); this adds connecting and TCP's
// own options.

#include <optional>

#include <couring/detail/io_awaitable.hpp>
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
  tcp_stream(io_context& ctx, int fd) : stream(ctx, fd, kind::socket) {}

  // Opens a socket, binds it to options.local if given, and connects.
  static task<result<tcp_stream>> connect(io_context& ctx, endpoint remote,
                                          connect_options options = {});

  class connect_awaitable : public detail::io_awaitable<connect_awaitable> {
  public:
    connect_awaitable(const detail::object_handle& h, const endpoint& remote) noexcept
        : io_awaitable(h.ring_ptr(), h.state(), nullptr), remote_(remote) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      io_uring_prep_connect(sqe, this->object->fd, remote_.data(), remote_.size());
    }
    static result<void> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      return {};
    }

  private:
    endpoint remote_; // the kernel reads the address from here
  };

  result<endpoint> local_endpoint() const;
  result<endpoint> remote_endpoint() const;
  result<void> set_no_delay(bool on) noexcept;
};

} // namespace couring
