#pragma once

// sleep_for / sleep_until: timers as IORING_OP_TIMEOUT requests -- no timerfd,
// no thread. Cancelling the surrounding scope ends them early with
// operation_canceled.

#include <chrono>

#include <couring/detail/io_awaitable.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>

namespace couring {

class sleep_awaitable : public detail::io_awaitable<sleep_awaitable> {
public:
  sleep_awaitable(io_context& ctx, std::chrono::nanoseconds t, unsigned flags) noexcept
      : io_awaitable(ctx), ts_(detail::to_timespec(t)), flags_(flags) {}
  sleep_awaitable(sleep_awaitable&& o) noexcept
      : io_awaitable(std::move(o)), ts_(o.ts_), flags_(o.flags_) {}

  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_timeout(sqe, &ts_, 0, flags_); }
  static result<void> make_result(int res) noexcept {
    // A pure timer "fails" with ETIME when it expires: that is success here.
    if (res == -ETIME || res >= 0)
      return {};
    return errno_code(res);
  }

private:
  __kernel_timespec ts_{};
  unsigned flags_;
};

template <class Rep, class Period>
[[nodiscard]] sleep_awaitable sleep_for(io_context& ctx,
                                        std::chrono::duration<Rep, Period> d) noexcept {
  return {ctx, std::chrono::duration_cast<std::chrono::nanoseconds>(d), 0};
}

// steady_clock deadlines are absolute CLOCK_MONOTONIC timeouts and
// system_clock ones CLOCK_REALTIME (they follow clock changes); other clocks
// are converted to a relative wait.
template <class Clock, class Duration>
[[nodiscard]] sleep_awaitable sleep_until(io_context& ctx,
                                          std::chrono::time_point<Clock, Duration> t) noexcept {
  using std::chrono::nanoseconds;
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return {ctx, std::chrono::duration_cast<nanoseconds>(t.time_since_epoch()), IORING_TIMEOUT_ABS};
  } else if constexpr (std::is_same_v<Clock, std::chrono::system_clock>) {
    return {ctx, std::chrono::duration_cast<nanoseconds>(t.time_since_epoch()),
            IORING_TIMEOUT_ABS | IORING_TIMEOUT_REALTIME};
  } else {
    return {ctx, std::chrono::duration_cast<nanoseconds>(t - Clock::now()), 0};
  }
}

} // namespace couring
