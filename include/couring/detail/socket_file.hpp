#pragma once

// The socket file a Unix socket bound to a filesystem path created. Its
// owner (unix_listener, unix_datagram_socket) removes it when closed -- but
// only if the path still names the very file it created (same device and
// inode, still a socket): a file someone put there since is left alone.

#include <utility>

#include <sys/types.h>

#include <couring/result.hpp>
#include <couring/unix_endpoint.hpp>

namespace couring::detail {

class socket_file {
public:
  socket_file() noexcept = default;
  socket_file(socket_file&& other) noexcept
      : path_(other.path_), dev_(other.dev_), ino_(other.ino_),
        owned_(std::exchange(other.owned_, false)) {}
  socket_file& operator=(socket_file&& other) noexcept {
    if (this != &other) {
      release();
      path_ = other.path_;
      dev_ = other.dev_;
      ino_ = other.ino_;
      owned_ = std::exchange(other.owned_, false);
    }
    return *this;
  }
  ~socket_file() { release(); }

  // Remembers the file now at path (right after bind created it).
  void adopt(const unix_endpoint& path) noexcept;
  // Removes the file if it is still the one adopted; idempotent.
  void release() noexcept;

private:
  unix_endpoint path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  bool owned_ = false;
};

// socket(AF_UNIX, type) bound to local; with remove_stale, a socket file
// nobody listens on (a connect is refused) is removed first. Returns the
// descriptor (the caller owns it). With unlink_on_close, file adopts the
// socket file bind created.
result<int> bind_unix_socket(int type, const unix_endpoint& local, bool remove_stale,
                             bool unlink_on_close, socket_file& file) noexcept;

} // namespace couring::detail
