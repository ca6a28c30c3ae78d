#include <couring/runtime.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <system_error>

#include <pthread.h>
#include <sched.h>

namespace couring {

namespace {
std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set))
        cpus.push_back(c);
  }
  if (cpus.empty())
    cpus.push_back(-1); // unknown: one thread, not pinned
  return cpus;
}
} // namespace

runtime::runtime(runtime_options options) {
  const std::vector<int> cpus = allowed_cpus();
  const std::size_t n = options.threads != 0 ? options.threads : cpus.size();
  teardown_ = std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(n));
  for (std::size_t i = 0; i < n; ++i)
    workers_.push_back(std::make_unique<worker>());

  // Context 0 first: the others attach to its ring's kernel worker pool.
  io_context_options opts = options.context;
  opts.attach_wq_fd = -1;
  // Contexts of a runtime hand work to each other (switch_to, spawn_on,
  // post): they spin briefly before sleeping unless told otherwise.
  if (opts.idle_spin == automatic_idle_spin)
    opts.idle_spin = runtime_default_idle_spin;
  const auto cpu_of = [&](std::size_t i) {
    return options.pin_threads ? cpus[i % cpus.size()] : -1;
  };
  std::size_t launched = 0;
  try {
    for (std::size_t i = 0; i < n; ++i) {
      workers_[i]->thread =
          std::thread([this, i, cpu = cpu_of(i), opts] { thread_main(i, cpu, opts); });
      ++launched;
      if (i == 0) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return ready_ == 1; });
        if (start_error_)
          break;
        opts.attach_wq_fd = workers_[0]->ctx->ring().ring_fd();
      }
    }
  } catch (...) { // std::thread could not start one
    std::lock_guard lock(mutex_);
    if (!start_error_)
      start_error_ = std::current_exception();
  }
  {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return ready_ == launched; });
  }
  if (start_error_) {
    // Tear down what started, then report why.
    std::exception_ptr e = start_error_;
    {
      std::lock_guard lock(mutex_);
      shutdown_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_)
      if (w->thread.joinable())
        w->thread.join();
    std::rethrow_exception(e);
  }
}

runtime::~runtime() {
  {
    std::lock_guard lock(mutex_);
    shutdown_ = true;
  }
  cv_.notify_all();
  for (auto& w : workers_)
    if (w->thread.joinable()) {
      if (w->thread.get_id() == std::this_thread::get_id()) {
        std::fputs("couring: a runtime destroyed from one of its own threads\n", stderr);
        std::terminate();
      }
      w->thread.join();
    }
}

void runtime::thread_main(std::size_t index, int cpu, io_context_options options) {
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set); // best effort
  }
  std::unique_ptr<io_context> ctx;
  try {
    ctx = std::make_unique<io_context>(options);
  } catch (...) {
    std::lock_guard lock(mutex_);
    if (!start_error_)
      start_error_ = std::current_exception();
  }
  {
    std::lock_guard lock(mutex_);
    workers_[index]->ctx = ctx.get();
    ++ready_;
  }
  cv_.notify_all();
  if (!ctx)
    return; // the constructor reports it and joins; no teardown phases

  std::uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return shutdown_ || session_ != seen; });
      if (shutdown_)
        break;
      seen = session_;
    }
    serve_session(index, *ctx);
    {
      std::lock_guard lock(mutex_);
      --active_;
    }
    cv_.notify_all();
  }

  if (start_error_) // some context failed to start: no run ever happened
    return;
  // Teardown, in phases across all threads (see runtime.hpp): every ring
  // refuses new messages, abandons the ones that arrived too late, cancels
  // and reaps everything; then one thread destroys every context's frames
  // (a frame may hold objects of several contexts: all rings are still
  // there); then each thread destroys its own context.
  ctx->close_mailbox();
  ctx->drain_for_teardown();
  teardown_->arrive_and_wait();
  if (index == 0)
    for (auto& w : workers_)
      w->ctx->destroy_frames();
  teardown_->arrive_and_wait();
  ctx.reset();
}

void runtime::serve_session(std::size_t index, io_context& ctx) {
  // Messages from other threads may arrive while nothing is pending here.
  ctx.keep_alive(+1);
  ctx.clear_stop(); // a stop() of the previous run, delivered after its loop ended
  try {
    if (index == 0) {
      if (!stopping_.load(std::memory_order_acquire))
        main_job_(ctx);
      stop(); // run's task is done: every context stops
    } else {
      while (!stopping_.load(std::memory_order_acquire))
        ctx.run();
    }
  } catch (...) {
    {
      std::lock_guard lock(mutex_);
      if (!error_)
        error_ = std::current_exception();
    }
    stop();
  }
  ctx.keep_alive(-1);
}

void runtime::run_session(std::function<void(io_context&)> main_job) {
  for (auto& w : workers_)
    if (w->thread.get_id() == std::this_thread::get_id())
      throw std::logic_error("couring: runtime::run from one of the runtime's own threads");
  std::unique_lock lock(mutex_);
  if (in_run_)
    throw std::logic_error("couring: runtime::run while another run is in progress");
  in_run_ = true;
  main_job_ = std::move(main_job);
  error_ = nullptr;
  stopping_.store(false, std::memory_order_release);
  active_ = workers_.size();
  ++session_;
  lock.unlock();
  cv_.notify_all();
  lock.lock();
  cv_.wait(lock, [&] { return active_ == 0; });
  in_run_ = false;
  main_job_ = nullptr;
  if (error_)
    std::rethrow_exception(std::exchange(error_, nullptr));
}

void runtime::stop() noexcept {
  stopping_.store(true, std::memory_order_release);
  for (auto& w : workers_)
    w->ctx->stop();
}

} // namespace couring
