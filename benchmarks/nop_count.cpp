// NOPs for instruction counting under callgrind, and for CPU time with
// /usr/bin/time (README "Performance"): nop_count couring|raw|floor
// IN_FLIGHT TOTAL. Under callgrind, run with two TOTALs and divide the
// difference in instructions by the difference in NOPs: the set-up cost
// cancels out. raw and floor are the references of nop_references.hpp.

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <couring/couring.hpp>

#include "nop_references.hpp"

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

} // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fputs("usage: nop_count couring|raw|floor IN_FLIGHT TOTAL\n", stderr);
    return 2;
  }
  const int in_flight = std::atoi(argv[2]);
  const long total = std::atol(argv[3]);
  if (in_flight < 1 || total < in_flight) {
    std::fputs("nop_count: IN_FLIGHT >= 1 and TOTAL >= IN_FLIGHT\n", stderr);
    return 2;
  }
  long sum = 0;
  if (std::strcmp(argv[1], "raw") == 0) {
    nop_references::ring r;
    sum = nop_references::raw_nop_loop(r, in_flight, total);
  } else if (std::strcmp(argv[1], "floor") == 0) {
    nop_references::ring r;
    sum = nop_references::floor_nop_loop(r, in_flight, total);
  } else if (std::strcmp(argv[1], "couring") == 0) {
    run_couring(in_flight, total);
  } else {
    std::fputs("nop_count: couring, raw or floor\n", stderr);
    return 2;
  }
  if (sum != 0) {
    std::fputs("nop_count: a NOP did not complete with 0\n", stderr);
    return 1;
  }
}
