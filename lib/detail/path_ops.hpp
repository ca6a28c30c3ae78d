#pragma once

// Requests on paths rather than on an open object (openat, renameat,
// unlinkat): the path strings belong to the awaiting frame, which outlives
// the request.

#include <couring/detail/io_awaitable.hpp>
#include <couring/result.hpp>

#include <fcntl.h>
#include <sys/types.h>

namespace couring::detail {

inline result<void> void_result(int res) noexcept {
  if (res < 0)
    return errno_code(res);
  return {};
}

// openat(AT_FDCWD, path, flags, mode): the new descriptor, or the error.
class open_awaitable : public io_awaitable<open_awaitable> {
public:
  static constexpr bool runs_in_kernel_worker = true; // io_awaitable.hpp
  open_awaitable(io_context& ctx, const char* path, int flags, mode_t mode) noexcept
      : io_awaitable(ctx), path_(path), flags_(flags), mode_(mode) {
    this->on_abandon = &abandon;
  }
  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_openat(sqe, AT_FDCWD, path_, flags_, mode_);
  }
  static result<int> make_result(int res) noexcept {
    if (res < 0)
      return errno_code(res);
    return res;
  }

private:
  static void abandon(operation* op) noexcept;

  const char* path_;
  int flags_;
  mode_t mode_;
};

class rename_awaitable : public io_awaitable<rename_awaitable> {
public:
  static constexpr bool runs_in_kernel_worker = true; // io_awaitable.hpp
  rename_awaitable(io_context& ctx, const char* from, const char* to) noexcept
      : io_awaitable(ctx), from_(from), to_(to) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_renameat(sqe, AT_FDCWD, from_, AT_FDCWD, to_, 0);
  }
  static result<void> make_result(int res) noexcept { return void_result(res); }

private:
  const char* from_;
  const char* to_;
};

class unlink_awaitable : public io_awaitable<unlink_awaitable> {
public:
  static constexpr bool runs_in_kernel_worker = true; // io_awaitable.hpp
  unlink_awaitable(io_context& ctx, const char* path) noexcept : io_awaitable(ctx), path_(path) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_unlinkat(sqe, AT_FDCWD, path_, 0); }
  static result<void> make_result(int res) noexcept { return void_result(res); }

private:
  const char* path_;
};

} // namespace couring::detail
