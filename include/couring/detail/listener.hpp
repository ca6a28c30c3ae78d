#pragma once

// What every listener (tcp_listener, unix_listener) shares: the acceptor
// behind it (lib/detail/acceptor.hpp: one multishot accept request, a queue
// of connections accepted ahead, back-off) and the accept awaitable. The
// acceptor hands out plain descriptors; each listener type wraps them into
// its own stream type through accept_awaitable<Stream>.

#include <coroutine>
#include <type_traits>
#include <utility>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/ring.hpp>
#include <couring/error.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>

namespace couring::detail {

class acceptor;

// Waits for one connection: res is its descriptor, or a negative errno.
// Several may wait at once; they are served in order. Cancellable
// (with_timeout, with_stop_token, when_any); closing the listener ends every
// waiting one with operation_canceled.
class accept_waiter : public operation {
public:
  static constexpr bool single_request = false;

  accept_waiter(acceptor* a, ring* r, bool direct = false) noexcept;
  accept_waiter(accept_waiter&& other) noexcept;
  accept_waiter& operator=(accept_waiter&&) = delete;
  ~accept_waiter();

  bool await_ready() noexcept;
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return start(awaiting, scope_of(awaiting));
  }
  bool start(std::coroutine_handle<> awaiting, cancel_scope* s);

private:
  friend class acceptor;
  acceptor* acceptor_;

protected:
  bool direct_; // res is a slot of the ring's file table
private:
  accept_waiter* prev_ = nullptr; // in the acceptor's list of waiters
  accept_waiter* next_ = nullptr;
  bool linked_ = false;
};

// accept_waiter whose result is a Stream (constructible from (io_context&, fd)).
template <class Stream>
class accept_awaitable : public accept_waiter {
public:
  using accept_waiter::accept_waiter;
  // Not noexcept: the new stream's state record may need memory.
  result<Stream> await_resume() {
    if (this->res < 0)
      return errno_code(this->res);
    if constexpr (std::is_constructible_v<Stream, io_context&, int, direct_slot_t>) {
      if (this->direct_)
        return Stream(this->owner_ring->context(), this->res, direct_slot);
    }
    return Stream(this->owner_ring->context(), this->res);
  }
};

// The part of a listener that is the same for every kind: owns the acceptor
// (which owns the descriptor). Moving it moves the acceptor; close() stops
// listening at once.
class listener_core {
public:
  listener_core() noexcept = default;
  // Adopts fd (closed if this throws). direct: accepted connections go
  // straight into the ring's file table (throws std::system_error if it
  // cannot be registered).
  listener_core(io_context& ctx, int fd, bool direct = false);
  listener_core(listener_core&& other) noexcept
      : acceptor_(std::exchange(other.acceptor_, nullptr)),
        ctx_(std::exchange(other.ctx_, nullptr)), direct_(other.direct_) {}
  listener_core& operator=(listener_core&& other) noexcept {
    if (this != &other) {
      close();
      acceptor_ = std::exchange(other.acceptor_, nullptr);
      ctx_ = std::exchange(other.ctx_, nullptr);
      direct_ = other.direct_;
    }
    return *this;
  }
  listener_core(const listener_core&) = delete;
  listener_core& operator=(const listener_core&) = delete;
  ~listener_core() { close(); }

  template <class Stream>
  accept_awaitable<Stream> accept() noexcept {
    // A closed listener's accept fails, but knows its context.
    return accept_awaitable<Stream>(acceptor_, ctx_ != nullptr ? &ctx_->ring() : nullptr, direct_);
  }
  bool is_open() const noexcept { return acceptor_ != nullptr; }
  int native_handle() const noexcept;
  void close() noexcept;

private:
  acceptor* acceptor_ = nullptr;
  io_context* ctx_ = nullptr;
  bool direct_ = false;
};

} // namespace couring::detail
