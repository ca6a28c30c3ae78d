#include <couring/signal_set.hpp>

#include <array>
#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include <pthread.h>
#include <unistd.h>

namespace couring {

namespace {

// Per thread, per signal: how many open sets block it, and whether the
// first of them found it unblocked (then the last one to close unblocks it).
struct thread_signal_state {
  std::array<unsigned, NSIG> sets{};
  sigset_t blocked_by_us{};
  thread_signal_state() { sigemptyset(&blocked_by_us); }
};
thread_local thread_signal_state signal_state;

} // namespace

signal_set::signal_set(io_context& ctx, std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : signals) {
    if (sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP || sigaddset(&set, sig) != 0)
      throw std::invalid_argument("couring: signal_set: signal " + std::to_string(sig) +
                                  " cannot be caught");
  }
  const int fd = ::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0)
    throw std::system_error(errno, std::system_category(), "couring: signal_set: signalfd");
  handle_ = detail::object_handle(ctx.ring(), fd); // owns fd from here on

  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &set, &old);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigismember(&set, sig) != 1)
      continue;
    if (signal_state.sets[sig]++ == 0 && sigismember(&old, sig) != 1)
      sigaddset(&signal_state.blocked_by_us, sig);
  }
  signals_ = set;
  holds_mask_ = true;
}

signal_set::signal_set(signal_set&& other) noexcept
    : handle_(std::move(other.handle_)), signals_(other.signals_),
      holds_mask_(std::exchange(other.holds_mask_, false)) {}

signal_set& signal_set::operator=(signal_set&& other) noexcept {
  if (this != &other) {
    close();
    handle_ = std::move(other.handle_);
    signals_ = other.signals_;
    holds_mask_ = std::exchange(other.holds_mask_, false);
  }
  return *this;
}

void signal_set::close() noexcept {
  // The descriptor first: a pending wait ends with operation_canceled and
  // nothing reads the signals any more once they are unblocked.
  handle_.close();
  if (!std::exchange(holds_mask_, false))
    return;
  sigset_t release;
  sigemptyset(&release);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigismember(&signals_, sig) != 1 || signal_state.sets[sig] == 0)
      continue;
    if (--signal_state.sets[sig] == 0 && sigismember(&signal_state.blocked_by_us, sig) == 1) {
      sigdelset(&signal_state.blocked_by_us, sig);
      sigaddset(&release, sig);
    }
  }
  pthread_sigmask(SIG_UNBLOCK, &release, nullptr);
}

} // namespace couring
