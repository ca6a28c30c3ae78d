#include <couring/registered_buffers.hpp>

#include <cerrno>
#include <new>
#include <stdexcept>
#include <system_error>
#include <vector>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>

namespace couring {

registered_buffers::registered_buffers(io_context& ctx, std::size_t count, std::size_t size)
    : ring_(&ctx.ring()), count_(count), size_(size) {
  if (count == 0 || size == 0 || size > (std::size_t{1} << 30))
    throw std::invalid_argument("couring: registered_buffers needs 1 or more buffers of "
                                "1 byte to 1 GiB");
  if (count > 16384) // IORING_MAX_REG_BUFFERS
    throw std::invalid_argument("couring: registered_buffers: at most 16384 buffers");
  // One anonymous mapping: page-aligned (the kernel pins whole pages, and a
  // page shared by two buffers would be pinned twice), zeroed, never moved.
  void* p =
      ::mmap(nullptr, count * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw std::bad_alloc();
  base_ = static_cast<std::byte*>(p);
  // The iovecs are needed only for the call: the kernel copies them.
  std::vector<iovec> iov(count);
  for (std::size_t i = 0; i < count; ++i)
    iov[i] = {.iov_base = base_ + i * size, .iov_len = size};
  if (const int err = ring_->register_buffers(iov.data(), static_cast<unsigned>(count)); err < 0) {
    ::munmap(base_, count * size);
    throw std::system_error(-err, std::system_category(),
                            err == -EBUSY ? "couring: this context has registered buffers already"
                                          : "couring: io_uring_register_buffers");
  }
}

registered_buffers::~registered_buffers() {
  ring_->unregister_buffers();
  ::munmap(base_, count_ * size_);
}

write_fixed_awaitable write_fixed(stream& s, const registered_buffers& bufs,
                                  std::span<const std::byte> buf) noexcept {
  // WRITE_FIXED on a socket cannot say MSG_NOSIGNAL (see the header).
  if (s.is_open() && !s.handle().state()->use_read_write)
    detail::ignore_default_sigpipe();
  return {s.handle(), bufs, buf, 0};
}

} // namespace couring
