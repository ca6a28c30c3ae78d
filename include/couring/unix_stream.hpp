#pragma once

// unix_stream: a connected Unix domain stream socket. Reading, writing,
// ordering and closing are those of every stream (stream.hpp): code written
// against couring::stream& serves TCP and Unix connections alike. This adds
// connecting by path, the peer's credentials, and passing descriptors.
//
// Passing descriptors (SCM_RIGHTS): send_with_fds sends bytes and up to
// max_fds descriptors in one sendmsg; the descriptors travel with the first
// byte of those bytes. receive_with_fds receives bytes and the descriptors
// that came with them, as unique_fds (closed if the program drops them,
// close-on-exec). If more descriptors came than fit (the sender sent more
// than max_fds in one message), the kernel drops the rest and says so
// (MSG_CTRUNC): the receive then closes those that did arrive and fails
// with std::errc::message_size -- the stream is out of step with the peer
// from there on and should be closed.

#include <array>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <utility>

#include <sys/socket.h>
#include <sys/types.h>

#include <couring/detail/connect_awaitable.hpp>
#include <couring/detail/io_awaitable.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>
#include <couring/task.hpp>
#include <couring/unique_fd.hpp>
#include <couring/unix_endpoint.hpp>

namespace couring {

// Who is at the other end (SO_PEERCRED): as of its connect() or
// socketpair(), not as of now.
struct unix_credentials {
  pid_t pid;
  uid_t uid;
  gid_t gid;
};

// The descriptors one receive_with_fds delivered. Owns them.
class received_fds {
public:
  static constexpr std::size_t capacity = 16;

  std::size_t size() const noexcept { return count_; }
  bool empty() const noexcept { return count_ == 0; }
  unique_fd& operator[](std::size_t i) noexcept { return fds_[i]; }
  unique_fd* begin() noexcept { return fds_.data(); }
  unique_fd* end() noexcept { return fds_.data() + count_; }
  // Closes every descriptor still held.
  void clear() noexcept {
    for (std::size_t i = 0; i < count_; ++i)
      fds_[i].reset();
    count_ = 0;
  }
  // For the receive: takes ownership of fd (closes it when full: cannot
  // happen, the control buffer holds no more than capacity).
  void adopt(int fd) noexcept {
    if (count_ < capacity)
      fds_[count_++].reset(fd);
    else
      ::close(fd);
  }

private:
  std::array<unique_fd, capacity> fds_;
  std::size_t count_ = 0;
};

class unix_stream : public stream {
public:
  // At most this many descriptors per send_with_fds / receive_with_fds.
  static constexpr std::size_t max_fds = received_fds::capacity;

  unix_stream() noexcept = default;
  // Adopts fd, a connected Unix stream socket; closes it when destroyed.
  unix_stream(io_context& ctx, int fd) : stream(ctx, fd) {}

  // Connects to a listening socket (a path, or "@name" for an abstract one).
  static task<result<unix_stream>> connect(io_context& ctx, unix_endpoint remote);
  using connect_awaitable = detail::connect_awaitable<unix_endpoint>;

  result<unix_credentials> peer_credentials() const noexcept;
  result<unix_endpoint> local_endpoint() const;
  result<unix_endpoint> remote_endpoint() const;

  // --- descriptor passing ---------------------------------------------------
  static constexpr std::size_t control_size = CMSG_SPACE(sizeof(int) * max_fds);

  class send_fds_awaitable : public detail::io_awaitable<send_fds_awaitable> {
  public:
    send_fds_awaitable(const detail::object_handle& h, std::span<const std::byte> buf,
                       std::span<const int> fds);
    send_fds_awaitable(send_fds_awaitable&& o) noexcept;
    void prepare(io_uring_sqe* sqe) noexcept;
    static result<std::size_t> make_result(int res) noexcept { return detail::byte_count(res); }

  private:
    std::span<const std::byte> buf_;
    std::size_t fd_count_;
    alignas(cmsghdr) unsigned char control_[control_size];
    iovec iov_{};
    msghdr msg_{};
  };

  class receive_fds_awaitable : public detail::io_awaitable<receive_fds_awaitable> {
  public:
    receive_fds_awaitable(const detail::object_handle& h, std::span<std::byte> buf,
                          received_fds& out) noexcept;
    receive_fds_awaitable(receive_fds_awaitable&& o) noexcept;
    void prepare(io_uring_sqe* sqe) noexcept;
    result<std::size_t> make_result(int res) noexcept;

  private:
    // Teardown: the frame goes away unresumed; what arrived is closed.
    static void abandon(detail::operation* op) noexcept;
    void take_descriptors(received_fds* out) noexcept;

    std::span<std::byte> buf_;
    received_fds* out_;
    alignas(cmsghdr) unsigned char control_[control_size];
    iovec iov_{};
    msghdr msg_{};
  };

  // Sends up to buf.size() bytes (the count may be short; the descriptors
  // went with the first byte sent) and fds, which must stay open until the
  // send completes (the kernel duplicates them then). buf must not be empty
  // and fds may hold at most max_fds: otherwise std::invalid_argument.
  [[nodiscard]] send_fds_awaitable send_with_fds(std::span<const std::byte> buf,
                                                 std::span<const int> fds) {
    return {handle_, buf, fds};
  }
  // Receives up to buf.size() bytes, and into out (cleared first) the
  // descriptors that came with them. 0 bytes means end of stream.
  [[nodiscard]] receive_fds_awaitable receive_with_fds(std::span<std::byte> buf,
                                                       received_fds& out) noexcept {
    return {handle_, buf, out};
  }
};

// Two connected unix_streams (socketpair(AF_UNIX, SOCK_STREAM)).
result<std::pair<unix_stream, unix_stream>> socketpair(io_context& ctx);

} // namespace couring
