#pragma once

// nop(ctx): an IORING_OP_NOP round trip through the ring. Useful to yield to
// the loop, and to measure what one operation costs (benchmarks/).

#include <couring/detail/io_awaitable.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>

namespace couring {

class nop_awaitable : public detail::io_awaitable<nop_awaitable> {
public:
  explicit nop_awaitable(io_context& ctx) noexcept : io_awaitable(ctx) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_nop(sqe); }
  static result<void> make_result(int res) noexcept {
    if (res < 0)
      return errno_code(res);
    return {};
  }
};

[[nodiscard]] inline nop_awaitable nop(io_context& ctx) noexcept {
  return nop_awaitable(ctx);
}

} // namespace couring
