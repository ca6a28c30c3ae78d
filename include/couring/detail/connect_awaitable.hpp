#pragma once

// One IORING_OP_CONNECT to an address (endpoint, unix_endpoint): the
// address is copied into the awaitable, where the kernel reads it from.

#include <couring/detail/io_awaitable.hpp>
#include <couring/error.hpp>
#include <couring/result.hpp>

namespace couring::detail {

template <class Address>
class connect_awaitable : public io_awaitable<connect_awaitable<Address>> {
  using base = io_awaitable<connect_awaitable<Address>>;

public:
  connect_awaitable(const object_handle& h, const Address& remote) noexcept
      : base(h.ring_ptr(), h.state(), nullptr), remote_(remote) {}
  connect_awaitable(connect_awaitable&& o) noexcept : base(std::move(o)), remote_(o.remote_) {}

  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_connect(sqe, this->object->fd, remote_.data(), remote_.size());
  }
  static result<void> make_result(int res) noexcept {
    if (res < 0)
      return errno_code(res);
    return {};
  }

private:
  Address remote_;
};

} // namespace couring::detail
