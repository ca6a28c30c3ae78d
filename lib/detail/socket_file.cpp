#include <couring/detail/socket_file.hpp>

#include <cerrno>
#include <string>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace couring::detail {

namespace {

std::error_code last_error() noexcept {
  return {errno, std::system_category()};
}

// Whether the socket file at path is stale: nobody is bound to it any more,
// so a connect of the same socket type is refused.
bool is_stale(int type, const unix_endpoint& path) noexcept {
  const int probe = ::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0)
    return false;
  const bool refused = ::connect(probe, path.data(), path.size()) != 0 && errno == ECONNREFUSED;
  ::close(probe);
  return refused;
}

} // namespace

void socket_file::adopt(const unix_endpoint& path) noexcept {
  release();
  if (path.is_unnamed() || path.is_abstract())
    return;
  std::string p(path.name());
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0)
    return;
  path_ = path;
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  owned_ = true;
}

void socket_file::release() noexcept {
  if (!std::exchange(owned_, false))
    return;
  // A path fits sun_path: no allocation beyond the small-string buffer is
  // guaranteed, so build it on the stack.
  char p[sizeof(sockaddr_un::sun_path) + 1] = {};
  const std::string_view name = path_.name();
  name.copy(p, name.size());
  struct stat st {};
  if (::lstat(p, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(p);
}

result<int> bind_unix_socket(int type, const unix_endpoint& local, bool remove_stale,
                             bool unlink_on_close, socket_file& file) noexcept {
  if (local.is_unnamed())
    return std::errc::invalid_argument;
  const int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return last_error();
  int err = ::bind(fd, local.data(), local.size()) == 0 ? 0 : errno;
  if (err == EADDRINUSE && remove_stale && !local.is_abstract()) {
    char p[sizeof(sockaddr_un::sun_path) + 1] = {};
    local.name().copy(p, local.name().size());
    struct stat st {};
    // Only a socket file, and only one nobody is bound to: a regular file
    // (or anything else) at the path is never removed.
    if (::lstat(p, &st) == 0 && S_ISSOCK(st.st_mode) && is_stale(type, local) && ::unlink(p) == 0)
      err = ::bind(fd, local.data(), local.size()) == 0 ? 0 : errno;
  }
  if (err != 0) {
    ::close(fd);
    return std::error_code(err, std::system_category());
  }
  if (unlink_on_close)
    file.adopt(local);
  return fd;
}

} // namespace couring::detail
