#include <couring/unix_stream.hpp>

#include <cerrno>
#include <cstring>

#include <sys/socket.h>

#include <couring/detail/socket.hpp>

namespace couring {

task<result<unix_stream>> unix_stream::connect(io_context& ctx, unix_endpoint remote) {
  // remote is taken by value: the task starts lazily.
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    co_return std::error_code(errno, std::system_category());
  unix_stream stream(ctx, fd); // owns the socket from here on, also on errors
  auto connected = co_await connect_awaitable(stream.handle_, remote);
  if (!connected)
    co_return connected.error();
  co_return std::move(stream);
}

result<unix_credentials> unix_stream::peer_credentials() const noexcept {
  if (!is_open())
    return std::error_code(EBADF, std::system_category());
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return std::error_code(errno, std::system_category());
  return unix_credentials{.pid = cred.pid, .uid = cred.uid, .gid = cred.gid};
}

namespace {
result<unix_endpoint> unix_name(int fd, bool peer) {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (auto r = detail::socket_name_raw(fd, peer, ss, len); !r)
    return r.error();
  return unix_endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}
} // namespace

result<unix_endpoint> unix_stream::local_endpoint() const {
  return unix_name(native_handle(), false);
}
result<unix_endpoint> unix_stream::remote_endpoint() const {
  return unix_name(native_handle(), true);
}

// --- send_with_fds ------------------------------------------------------------

unix_stream::send_fds_awaitable::send_fds_awaitable(const detail::object_handle& h,
                                                    std::span<const std::byte> buf,
                                                    std::span<const int> fds)
    : io_awaitable(h.ring_ptr(), h.state(), h.state() ? &h.state()->write_side : nullptr),
      buf_(buf), fd_count_(fds.size()) {
  if (fds.size() > max_fds)
    throw std::invalid_argument("couring: send_with_fds: more than unix_stream::max_fds (16)");
  if (buf.empty())
    throw std::invalid_argument("couring: send_with_fds: descriptors need at least one byte");
  std::memset(control_, 0, sizeof control_);
  if (fd_count_ > 0) {
    // The control message is built once here; prepare() only points at it.
    msghdr m{};
    m.msg_control = control_;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count_);
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fd_count_);
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fd_count_);
  }
}

unix_stream::send_fds_awaitable::send_fds_awaitable(send_fds_awaitable&& o) noexcept
    : io_awaitable(std::move(o)), buf_(o.buf_), fd_count_(o.fd_count_) {
  std::memcpy(control_, o.control_, sizeof control_);
}

void unix_stream::send_fds_awaitable::prepare(io_uring_sqe* sqe) noexcept {
  iov_ = {const_cast<std::byte*>(buf_.data()), buf_.size()};
  msg_ = {};
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  if (fd_count_ > 0) {
    msg_.msg_control = control_;
    msg_.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count_);
  }
  io_uring_prep_sendmsg(sqe, this->object->fd, &msg_, MSG_NOSIGNAL);
}

// --- receive_with_fds -----------------------------------------------------------

unix_stream::receive_fds_awaitable::receive_fds_awaitable(const detail::object_handle& h,
                                                          std::span<std::byte> buf,
                                                          received_fds& out) noexcept
    : io_awaitable(h.ring_ptr(), h.state(), h.state() ? &h.state()->read_side : nullptr), buf_(buf),
      out_(&out) {
  this->on_abandon = &abandon;
}

unix_stream::receive_fds_awaitable::receive_fds_awaitable(receive_fds_awaitable&& o) noexcept
    : io_awaitable(std::move(o)), buf_(o.buf_), out_(o.out_) {
  this->on_abandon = &abandon;
}

void unix_stream::receive_fds_awaitable::prepare(io_uring_sqe* sqe) noexcept {
  iov_ = {buf_.data(), buf_.size()};
  msg_ = {};
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  msg_.msg_control = control_;
  msg_.msg_controllen = sizeof control_;
  // The kernel writes back msg_controllen (what it filled) and msg_flags.
  io_uring_prep_recvmsg(sqe, this->object->fd, &msg_, MSG_CMSG_CLOEXEC);
}

void unix_stream::receive_fds_awaitable::take_descriptors(received_fds* out) noexcept {
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg_); c != nullptr; c = CMSG_NXTHDR(&msg_, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (out != nullptr)
        out->adopt(fd);
      else
        ::close(fd);
    }
  }
}

result<std::size_t> unix_stream::receive_fds_awaitable::make_result(int res) noexcept {
  out_->clear();
  if (res < 0)
    return errno_code(res);
  take_descriptors(out_);
  if (msg_.msg_flags & MSG_CTRUNC) {
    // Some descriptors were dropped by the kernel: those that arrived are
    // closed too, rather than handed out as if the message were whole.
    out_->clear();
    return std::make_error_code(std::errc::message_size);
  }
  return static_cast<std::size_t>(res);
}

void unix_stream::receive_fds_awaitable::abandon(detail::operation* op) noexcept {
  auto* self = static_cast<receive_fds_awaitable*>(op);
  if (op->res >= 0)
    self->take_descriptors(nullptr);
}

// --- socketpair -------------------------------------------------------------------

result<std::pair<unix_stream, unix_stream>> socketpair(io_context& ctx) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    return std::error_code(errno, std::system_category());
  unix_stream a(ctx, fds[0]);
  unix_stream b(ctx, fds[1]);
  return std::pair(std::move(a), std::move(b));
}

} // namespace couring
