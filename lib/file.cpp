#include <couring/file.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>

#include <unistd.h>

#include "detail/path_ops.hpp"

namespace couring {

namespace detail {

void open_awaitable::abandon(operation* op) noexcept {
  // The context is going away with the open in flight: nobody will adopt
  // what the kernel opened.
  if (op->res >= 0)
    ::close(op->res);
}

} // namespace detail

namespace {

int open_flags(const open_options& o) {
  const bool write = o.write || o.append || o.truncate;
  if (!o.read && !write)
    throw std::invalid_argument("couring: file::open with neither read nor write");
  if (o.truncate && !(o.write || o.append))
    throw std::invalid_argument("couring: file::open with truncate needs write");
  if (o.exclusive && !o.create)
    throw std::invalid_argument("couring: file::open with exclusive needs create");
  int flags = O_CLOEXEC;
  flags |= o.read && write ? O_RDWR : write ? O_WRONLY : O_RDONLY;
  if (o.create)
    flags |= O_CREAT;
  if (o.truncate)
    flags |= O_TRUNC;
  if (o.append)
    flags |= O_APPEND;
  if (o.exclusive)
    flags |= O_EXCL;
  if (o.direct)
    flags |= O_DIRECT;
  return flags;
}

// A name for write_file's temporary that no other writer picks: process,
// counter and clock; O_EXCL catches the rest.
std::string temporary_name(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".couring-tmp-%d-%u-%llx", static_cast<int>(::getpid()),
                counter.fetch_add(1, std::memory_order_relaxed),
                static_cast<unsigned long long>(
                    std::chrono::steady_clock::now().time_since_epoch().count() & 0xffffff));
  return path + suffix;
}

std::string directory_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos)
    return ".";
  if (slash == 0)
    return "/";
  return path.substr(0, slash);
}

} // namespace

task<result<file>> file::open(io_context& ctx, std::string path, open_options options) {
  // path is a parameter, so it lives in this frame until the request is done.
  const int flags = open_flags(options);
  auto fd = co_await detail::open_awaitable(ctx, path.c_str(), flags, options.mode);
  if (!fd)
    co_return fd.error();
  co_return file(ctx, *fd);
}

task<result<std::vector<std::byte>>> read_file(io_context& ctx, std::string path) {
  auto f = co_await file::open(ctx, path);
  if (!f)
    co_return f.error();
  auto size = co_await f->size();
  if (!size)
    co_return size.error();
  std::vector<std::byte> data(static_cast<std::size_t>(*size));
  std::size_t used = 0;
  // The announced size first, then on until the end of file: the file may
  // have grown, or report no size at all (/proc).
  for (;;) {
    if (used == data.size())
      data.resize(used < 16384 ? 16384 : used * 2);
    auto n = co_await f->read_at(std::span(data).subspan(used), used);
    if (!n)
      co_return n.error();
    if (*n == 0)
      break;
    used += *n;
  }
  data.resize(used);
  co_return data;
}

task<result<void>> write_file(io_context& ctx, std::string path, std::span<const std::byte> bytes,
                              mode_t mode) {
  result<file> f = std::make_error_code(std::errc::file_exists);
  std::string temporary;
  for (int attempt = 0; attempt < 16; ++attempt) {
    temporary = temporary_name(path);
    f = co_await file::open(
        ctx, temporary,
        {.read = false, .write = true, .create = true, .exclusive = true, .mode = mode});
    if (f || f.error() != std::errc::file_exists)
      break;
  }
  if (!f)
    co_return f.error();

  std::error_code failed;
  if (auto w = co_await f->write_all_at(bytes, 0); !w)
    failed = w.error();
  else if (auto s = co_await f->sync(); !s)
    failed = s.error();
  f->close();
  if (!failed) {
    auto renamed = co_await detail::rename_awaitable(ctx, temporary.c_str(), path.c_str());
    if (!renamed)
      failed = renamed.error();
  }
  if (failed) {
    (void)co_await detail::unlink_awaitable(ctx, temporary.c_str());
    co_return failed;
  }

  // The rename is durable once the directory entry is: fsync the directory.
  const std::string dir = directory_of(path);
  auto dfd =
      co_await detail::open_awaitable(ctx, dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (!dfd)
    co_return dfd.error();
  file directory(ctx, *dfd);
  co_return co_await directory.sync();
}

std::system_error file_error(std::error_code ec, std::string_view operation,
                             std::string_view path) {
  std::string what = "couring: ";
  what += operation;
  what += " ";
  what += path;
  return std::system_error(ec, what);
}

} // namespace couring
