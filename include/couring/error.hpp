#pragma once

// couring's own error codes, for conditions that have no errno.

#include <string>
#include <system_error>

namespace couring {

enum class error {
  end_of_stream = 1,     // read_exactly: the peer closed before the buffer was full
  end_of_file = 2,       // read_exactly_at, send_file: the file ended before the range did
  not_registered = 3,    // read_fixed/write_fixed: the buffer is not inside one registered buffer
  direct_descriptor = 4, // needs a real descriptor; the stream is a slot of the ring's file table
};

const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(error e) noexcept {
  return {static_cast<int>(e), error_category()};
}

} // namespace couring

template <>
struct std::is_error_code_enum<couring::error> : std::true_type {};
