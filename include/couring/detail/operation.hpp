#pragma once

// The completion record of one in-flight io_uring request. Its address is the
// SQE's user_data, so it must stay put (and alive) until its last CQE has been
// reaped: that is why records live inside awaiters, which live in the awaiting
// coroutine's frame, and why a frame with a record in flight is never
// destroyed (DESIGN.md, "Lifetime rules").

#include <chrono>
#include <coroutine>
#include <cstdint>

#include <linux/time_types.h>

namespace couring {
class io_context;
}

namespace couring::detail {

class cancel_scope;

struct operation {
  // Runs when every CQE the record expects has arrived, and for each
  // intermediate CQE (IORING_CQE_F_MORE) of a multishot request. A plain
  // function pointer: one indirect call per completion, no vtable.
  using completion_fn = void (*)(operation*) noexcept;

  // nullptr: the common case, resume the waiting coroutine (done inline by
  // the loop, without an indirect call).
  completion_fn on_complete = nullptr;
  // How a cancel scope cancels this record: nullptr means
  // IORING_OP_ASYNC_CANCEL on its user_data. Records that wait in a queue of
  // ours rather than in the kernel (accept waiters) provide their own.
  completion_fn cancel_fn = nullptr;
  io_context* ctx = nullptr;
  std::coroutine_handle<> waiter{};
  cancel_scope* scope = nullptr;
  // Filled in by the completion (or by start() when nothing is submitted);
  // left uninitialised until then, they cost nothing per operation.
  int res;                 // cqe->res of the request itself
  std::uint32_t cqe_flags; // cqe->flags of the request itself
  int link_timeout_res;    // cqe->res of a linked timeout, when one was attached
  std::uint32_t outstanding = 0;
};

// A duration as the kernel's timeout requests take it; negative means now.
inline __kernel_timespec to_timespec(std::chrono::nanoseconds t) noexcept {
  if (t.count() < 0)
    t = std::chrono::nanoseconds::zero();
  return {.tv_sec = t.count() / 1'000'000'000, .tv_nsec = t.count() % 1'000'000'000};
}

// user_data of a linked timeout's CQE: the record's address with the low bit
// set (records are at least 8-byte aligned), so both CQEs find the same record.
inline constexpr std::uint64_t link_timeout_tag = 1;

} // namespace couring::detail
