#pragma once

// The two references couring's `co_await nop(ctx)` is measured against
// (benchmarks/bench_ops.cpp for time, benchmarks/nop_count.cpp for
// instructions), on a ring set up like couring's:
//
// - raw_nop_loop: what a careful hand-written liburing program does. One
//   io_uring_submit_and_wait per turn, batched reaping, and each CQE's
//   successor prepared right in the CQE loop, reusing its user_data: no
//   dispatch at all.
// - floor_nop_loop: the least any coroutine API can do. Coroutines that each
//   await NOPs through an awaiter that only takes an SQE and stores the
//   coroutine's handle as its user_data; the loop resumes that handle from
//   the CQE. No completion record, no result type, no cancellation, no
//   counters, no check of any kind: none of couring's guarantees. What
//   couring costs above it is the price of those; what it costs above the raw
//   loop is the price of being a coroutine at all.

#include <coroutine>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <vector>

#include <liburing.h>

namespace nop_references {

struct ring {
  io_uring r{};
  ring() {
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN |
              IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
    p.cq_entries = 1024;
    if (io_uring_queue_init_params(256, &r, &p) != 0)
      throw std::runtime_error("io_uring_queue_init_params");
    io_uring_register_ring_fd(&r);
  }
  ~ring() { io_uring_queue_exit(&r); }
  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;
};

// total NOPs, in_flight at a time; returns the sum of their results (0).
inline long raw_nop_loop(ring& rg, int in_flight, long total) {
  io_uring* r = &rg.r;
  long started = 0, done = 0, sum = 0;
  for (; started < in_flight && started < total; ++started) {
    io_uring_sqe* sqe = io_uring_get_sqe(r);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, static_cast<std::uint64_t>(started) + 1);
  }
  while (done < total) {
    io_uring_submit_and_wait(r, 1);
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(r, head, cqe) {
      ++seen;
      sum += cqe->res;
      if (started < total) {
        io_uring_sqe* sqe = io_uring_get_sqe(r);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, cqe->user_data);
        ++started;
      }
    }
    io_uring_cq_advance(r, seen);
    done += seen;
  }
  return sum;
}

// A lazily started coroutine that runs to its end; the loop below owns it.
struct floor_task {
  struct promise_type {
    floor_task get_return_object() {
      return {std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
  std::coroutine_handle<promise_type> handle;
};

// The awaiter: an SQE, a NOP, the handle as user_data. The loop stores the
// CQE's res in res before resuming, so the result reaches the coroutine.
struct floor_nop {
  explicit floor_nop(io_uring* ring) noexcept : r(ring) {}
  io_uring* r;
  int res = 0;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    io_uring_sqe* sqe = io_uring_get_sqe(r);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, this);
    waiter = h;
  }
  int await_resume() const noexcept { return res; }
  std::coroutine_handle<> waiter{};
};

inline floor_task floor_coroutine(io_uring* r, long n, long& sum) {
  for (long i = 0; i < n; ++i)
    sum += co_await floor_nop(r);
}

inline long floor_nop_loop(ring& rg, int in_flight, long total) {
  io_uring* r = &rg.r;
  long sum = 0;
  const long per_coroutine = total / in_flight;
  total = per_coroutine * in_flight;
  std::vector<floor_task> tasks;
  tasks.reserve(static_cast<std::size_t>(in_flight));
  for (int i = 0; i < in_flight; ++i) {
    tasks.push_back(floor_coroutine(r, per_coroutine, sum));
    tasks.back().handle.resume();
  }
  long done = 0;
  while (done < total) {
    io_uring_submit_and_wait(r, 1);
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(r, head, cqe) {
      ++seen;
      auto* op = static_cast<floor_nop*>(io_uring_cqe_get_data(cqe));
      op->res = cqe->res;
      op->waiter.resume();
    }
    io_uring_cq_advance(r, seen);
    done += seen;
  }
  for (floor_task& t : tasks)
    t.handle.destroy();
  return sum;
}

} // namespace nop_references
