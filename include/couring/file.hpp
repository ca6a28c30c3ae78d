#pragma once

// file: a file opened by path whose opening, positional reads and writes,
// syncs and stat are io_uring requests (IORING_OP_OPENAT, READ, WRITE, FSYNC,
// STATX). Buffered regular-file I/O that misses the page cache runs in the
// kernel's io-wq workers; the loop thread never blocks on the disk.
//
// Reads and writes are positional (an explicit offset), so they need no
// order among themselves: any number may be in flight at once, from any
// number of tasks. read_at/write_at may be short; read_exactly_at and
// write_all_at loop (a read that reaches the end of the file first fails with
// error::end_of_file, transferred() tells how much was read).
//
// Closing follows every I/O object's rules: close() (or the destructor) ends
// the operations still in flight with operation_canceled -- where the kernel
// can stop them: a read of a regular file usually just finishes -- and the
// descriptor is closed (with close(2), by the ring, not IORING_OP_CLOSE) only
// after the last of them has completed. close(2) on a file can report a
// deferred write error on some file systems (NFS): call sync() first when
// that matters; its result is the one to trust.
//
// Errors are values carrying the errno (ENOENT, EACCES, EISDIR, ENOSPC,
// EFBIG, ...). file_error() builds an exception whose message names the
// operation and the path, for code that prefers to throw.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>

#include <couring/detail/io_awaitable.hpp>
#include <couring/detail/transfer_all.hpp>
#include <couring/error.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/task.hpp>

namespace couring {

// How file::open opens a path. Aggregate: open_options{.write = true, .create = true}.
struct open_options {
  bool read = true;
  bool write = false;
  bool create = false;   // O_CREAT: create the file if it does not exist
  bool truncate = false; // O_TRUNC: cut an existing file to length 0 (needs write)
  bool append = false; // O_APPEND: every write goes to the end, whatever its offset (implies write)
  bool exclusive = false; // O_EXCL with create: EEXIST if the path exists already
  bool direct = false;    // O_DIRECT: bypass the page cache; buffers, offsets and
                          // lengths must then be aligned to the device's block size
  mode_t mode = 0644;     // permissions of a created file (the umask applies)
};

class file {
public:
  file() noexcept = default;
  // Adopts fd, an open file descriptor; closes it when destroyed.
  file(io_context& ctx, int fd) : handle_(ctx.ring(), fd) {}

  // Opens path (relative paths are relative to the working directory).
  // Misuse (neither read nor write, truncate or exclusive without what they
  // need) throws std::invalid_argument; failures are values.
  static task<result<file>> open(io_context& ctx, std::string path, open_options options = {});

  // --- awaitables -----------------------------------------------------------
  // One positional read (Writing = false) or write; the count may be short.
  template <bool Writing>
  class transfer_at_awaitable : public detail::io_awaitable<transfer_at_awaitable<Writing>> {
    using base = detail::io_awaitable<transfer_at_awaitable<Writing>>;

  public:
    // Run by the kernel's worker threads (io_awaitable::runs_in_kernel_worker).
    static constexpr bool runs_in_kernel_worker = true;
    using span_type = std::conditional_t<Writing, std::span<const std::byte>, std::span<std::byte>>;
    // No side: positional requests need no order (they are still counted on
    // the file, so a close waits for them).
    transfer_at_awaitable(const detail::object_handle& h, span_type buf,
                          std::uint64_t offset) noexcept
        : base(h.ring_ptr(), h.state(), nullptr), buf_(buf), offset_(offset) {}
    transfer_at_awaitable(transfer_at_awaitable&& o) noexcept
        : base(std::move(o)), buf_(o.buf_), offset_(o.offset_) {}

    void prepare(io_uring_sqe* sqe) noexcept {
      prep(sqe, this->object->fd, buf_.data(), buf_.size(), offset_);
    }
    static result<std::size_t> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      return static_cast<std::size_t>(res);
    }

    template <class Pointer>
    static void prep(io_uring_sqe* sqe, int fd, Pointer data, std::size_t len,
                     std::uint64_t offset) noexcept {
      // One request moves at most 2 GiB - 4 KiB (the kernel's own limit).
      const auto n = static_cast<unsigned>(std::min<std::size_t>(len, 0x7ffff000));
      if constexpr (Writing)
        io_uring_prep_write(sqe, fd, data, n, offset);
      else
        io_uring_prep_read(sqe, fd, data, n, offset);
    }

  private:
    span_type buf_;
    std::uint64_t offset_;
  };
  using read_at_awaitable = transfer_at_awaitable<false>;
  using write_at_awaitable = transfer_at_awaitable<true>;

  // The whole buffer at offset (detail/transfer_all.hpp).
  template <bool Writing>
  class transfer_all_at_awaitable
      : public detail::transfer_all<transfer_all_at_awaitable<Writing>, Writing> {
    using base = detail::transfer_all<transfer_all_at_awaitable<Writing>, Writing>;

  public:
    // Run by the kernel's worker threads (io_awaitable::runs_in_kernel_worker).
    static constexpr bool runs_in_kernel_worker = true;
    using span_type = typename base::span_type;
    transfer_all_at_awaitable(const detail::object_handle& h, span_type buf,
                              std::uint64_t offset) noexcept
        : base(h.ring_ptr(), h.state(), nullptr, buf), offset_(offset) {}
    transfer_all_at_awaitable(transfer_all_at_awaitable&& o) noexcept
        : base(std::move(o)), offset_(o.offset_) {}

    template <class Pointer>
    void prepare_part(io_uring_sqe* sqe, int fd, Pointer data, std::size_t len,
                      std::size_t done) noexcept {
      transfer_at_awaitable<Writing>::prep(sqe, fd, data, len, offset_ + done);
    }
    static std::error_code early_end() noexcept { return make_error_code(error::end_of_file); }

  private:
    std::uint64_t offset_;
  };
  using read_exactly_at_awaitable = transfer_all_at_awaitable<false>;
  using write_all_at_awaitable = transfer_all_at_awaitable<true>;

  // fsync (data_only: fdatasync).
  class sync_awaitable : public detail::io_awaitable<sync_awaitable> {
  public:
    // Run by the kernel's worker threads (io_awaitable::runs_in_kernel_worker).
    static constexpr bool runs_in_kernel_worker = true;
    sync_awaitable(const detail::object_handle& h, bool data_only) noexcept
        : io_awaitable(h.ring_ptr(), h.state(), nullptr), data_only_(data_only) {}
    sync_awaitable(sync_awaitable&& o) noexcept
        : io_awaitable(std::move(o)), data_only_(o.data_only_) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      io_uring_prep_fsync(sqe, this->object->fd, data_only_ ? IORING_FSYNC_DATASYNC : 0);
    }
    static result<void> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      return {};
    }

  private:
    bool data_only_;
  };

  // statx on the descriptor; the kernel fills the struct inside the awaitable.
  template <bool SizeOnly>
  class stat_awaitable : public detail::io_awaitable<stat_awaitable<SizeOnly>> {
    using base = detail::io_awaitable<stat_awaitable<SizeOnly>>;

  public:
    // Run by the kernel's worker threads (io_awaitable::runs_in_kernel_worker).
    static constexpr bool runs_in_kernel_worker = true;
    using value_type = std::conditional_t<SizeOnly, std::uint64_t, struct statx>;
    explicit stat_awaitable(const detail::object_handle& h) noexcept
        : base(h.ring_ptr(), h.state(), nullptr) {}
    stat_awaitable(stat_awaitable&& o) noexcept : base(std::move(o)) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      io_uring_prep_statx(sqe, this->object->fd, "", AT_EMPTY_PATH,
                          SizeOnly ? STATX_SIZE : STATX_BASIC_STATS, &stx_);
    }
    result<value_type> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      if constexpr (SizeOnly)
        return static_cast<std::uint64_t>(stx_.stx_size);
      else
        return stx_;
    }

  private:
    struct statx stx_ {};
  };

  // Up to buf.size() bytes at offset; 0 means offset is at (or past) the end.
  [[nodiscard]] read_at_awaitable read_at(std::span<std::byte> buf, std::uint64_t offset) noexcept {
    return {handle_, buf, offset};
  }
  // Up to buf.size() bytes at offset; the count may be short.
  [[nodiscard]] write_at_awaitable write_at(std::span<const std::byte> buf,
                                            std::uint64_t offset) noexcept {
    return {handle_, buf, offset};
  }
  // Fills all of buf from offset; error::end_of_file if the file ends first.
  [[nodiscard]] read_exactly_at_awaitable read_exactly_at(std::span<std::byte> buf,
                                                          std::uint64_t offset) noexcept {
    return {handle_, buf, offset};
  }
  // Writes all of buf at offset, looping over short writes.
  [[nodiscard]] write_all_at_awaitable write_all_at(std::span<const std::byte> buf,
                                                    std::uint64_t offset) noexcept {
    return {handle_, buf, offset};
  }
  // Data and metadata to stable storage (fsync).
  [[nodiscard]] sync_awaitable sync() noexcept { return {handle_, false}; }
  // Data, and the metadata needed to read it back, to stable storage (fdatasync).
  [[nodiscard]] sync_awaitable sync_data() noexcept { return {handle_, true}; }
  // struct statx of the open file (size, mode, times, ...).
  [[nodiscard]] stat_awaitable<false> stat() noexcept { return stat_awaitable<false>(handle_); }
  // Its size in bytes.
  [[nodiscard]] stat_awaitable<true> size() noexcept { return stat_awaitable<true>(handle_); }

  // Closes the file (see the top of this header); idempotent.
  void close() noexcept { handle_.close(); }

  bool is_open() const noexcept { return handle_.is_open(); }
  // The descriptor, or -1 once closed. Closing it yourself breaks the
  // guarantees above.
  int native_handle() const noexcept { return handle_.fd(); }
  io_context& context() const noexcept { return handle_.ring_ptr()->context(); }
  // For operations built on top of files (send_file).
  const detail::object_handle& handle() const noexcept { return handle_; }

private:
  detail::object_handle handle_;
};

// The whole content of the file at path (read until end of file, so files
// whose size is unknown, like those in /proc, work too).
task<result<std::vector<std::byte>>> read_file(io_context& ctx, std::string path);

// Replaces the file at path with bytes, atomically: they are written to a
// new temporary file in the same directory (path + ".couring-tmp-..."),
// fsync'ed, renamed over path, and the directory is fsync'ed, so that after
// a crash path holds either the old content or the new one, never a mix. The
// new file gets mode (less the umask), not the old file's permissions. On
// failure the temporary is removed and path is untouched. bytes must stay
// valid until the task has finished (tasks start when awaited).
task<result<void>> write_file(io_context& ctx, std::string path, std::span<const std::byte> bytes,
                              mode_t mode = 0644);

// std::system_error whose what() is "couring: <operation> <path>: <reason>",
// for code that turns a file error into an exception.
std::system_error file_error(std::error_code ec, std::string_view operation, std::string_view path);

} // namespace couring
