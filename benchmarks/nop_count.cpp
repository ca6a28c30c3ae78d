// NOPs for instruction counting under callgrind (scripts: see README
// "Performance"): nop_count couring|raw IN_FLIGHT TOTAL. Run with two TOTALs
// and divide the difference in instructions by the difference in NOPs: the
// set-up cost cancels out.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <liburing.h>

#include <couring/couring.hpp>

namespace {

couring::task<void> nop_loop(couring::io_context& ctx, long n) {
  for (long i = 0; i < n; ++i)
    (void)co_await couring::nop(ctx);
}

void run_couring(int in_flight, long total) {
  couring::io_context ctx;
  if (in_flight == 1) {
    ctx.run(nop_loop(ctx, total));
    return;
  }
  for (int i = 0; i < in_flight; ++i)
    ctx.spawn(nop_loop(ctx, total / in_flight));
  ctx.run();
}

// The same loop as benchmarks/bench_ops.cpp's raw_nop.
void run_raw(int in_flight, long total) {
  io_uring ring{};
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN |
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
  p.cq_entries = 1024;
  if (io_uring_queue_init_params(256, &ring, &p) != 0)
    throw std::runtime_error("io_uring_queue_init_params");
  io_uring_register_ring_fd(&ring);
  long started = 0, done = 0;
  for (; started < in_flight; ++started) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, static_cast<std::uint64_t>(started) + 1);
  }
  long sink = 0;
  while (done < total) {
    io_uring_submit_and_wait(&ring, 1);
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      sink += cqe->res;
      if (started < total) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, cqe->user_data);
        ++started;
      }
    }
    io_uring_cq_advance(&ring, seen);
    done += seen;
  }
  io_uring_queue_exit(&ring);
  if (sink != 0)
    std::puts("unexpected result");
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fputs("usage: nop_count couring|raw IN_FLIGHT TOTAL\n", stderr);
    return 2;
  }
  const int in_flight = std::atoi(argv[2]);
  const long total = std::atol(argv[3]);
  if (std::strcmp(argv[1], "raw") == 0)
    run_raw(in_flight, total);
  else
    run_couring(in_flight, total);
}
