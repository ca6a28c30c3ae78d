#pragma once

// result<T>: the value of an I/O operation or the std::error_code it failed with.
// Shaped like std::expected (C++23) so that code can migrate to it later; I/O
// failures are ordinary values here, never exceptions.

#include <cassert>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace couring {

template <class T>
class [[nodiscard]] result {
  static_assert(!std::is_reference_v<T>, "result<T&> is not supported; use a pointer");
  static_assert(!std::is_same_v<std::remove_cv_t<T>, std::error_code>,
                "result<std::error_code> would be ambiguous");

public:
  using value_type = T;
  using error_type = std::error_code;

  result() requires std::is_default_constructible_v<T> : storage_(std::in_place_index<0>) {}

  template <class U = T>
  requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::remove_cvref_t<U>, result> &&
           !std::is_same_v<std::remove_cvref_t<U>, std::error_code> &&
           !std::is_same_v<std::remove_cvref_t<U>, std::errc>) result(U&& value)
      : storage_(std::in_place_index<0>, std::forward<U>(value)) {}

  result(std::error_code ec) : storage_(std::in_place_index<1>, ec) {
    assert(ec && "a result built from an error_code needs a non-zero error");
  }
  result(std::errc e) : result(std::make_error_code(e)) {}

  bool has_value() const noexcept { return storage_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & {
    throw_if_error();
    return *std::get_if<0>(&storage_);
  }
  const T& value() const& {
    throw_if_error();
    return *std::get_if<0>(&storage_);
  }
  T&& value() && {
    throw_if_error();
    return std::move(*std::get_if<0>(&storage_));
  }

  template <class U>
  T value_or(U&& fallback) const& {
    return has_value() ? **this : static_cast<T>(std::forward<U>(fallback));
  }
  template <class U>
  T value_or(U&& fallback) && {
    return has_value() ? std::move(**this) : static_cast<T>(std::forward<U>(fallback));
  }

  // The error, or a default (empty) error_code when there is a value: unlike
  // std::expected this is never undefined behaviour.
  std::error_code error() const noexcept {
    const auto* ec = std::get_if<1>(&storage_);
    return ec ? *ec : std::error_code{};
  }

  T& operator*() & noexcept {
    assert(has_value());
    return *std::get_if<0>(&storage_);
  }
  const T& operator*() const& noexcept {
    assert(has_value());
    return *std::get_if<0>(&storage_);
  }
  T&& operator*() && noexcept {
    assert(has_value());
    return std::move(*std::get_if<0>(&storage_));
  }
  T* operator->() noexcept { return &**this; }
  const T* operator->() const noexcept { return &**this; }

private:
  void throw_if_error() const {
    if (const auto* ec = std::get_if<1>(&storage_))
      throw std::system_error(*ec);
  }

  std::variant<T, std::error_code> storage_;
};

template <>
class [[nodiscard]] result<void> {
public:
  using value_type = void;
  using error_type = std::error_code;

  // Keeps the error as value + category pointer: a default std::error_code
  // would call std::system_category() (out of line) on every success.
  result() noexcept = default;
  result(std::error_code ec) noexcept : value_(ec.value()), category_(&ec.category()) {
    assert(ec && "a result built from an error_code needs a non-zero error");
  }
  result(std::errc e) noexcept : result(std::make_error_code(e)) {}

  bool has_value() const noexcept { return category_ == nullptr; }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const {
    if (!has_value())
      throw std::system_error(error());
  }
  void operator*() const noexcept { assert(has_value()); }
  std::error_code error() const noexcept {
    return has_value() ? std::error_code{} : std::error_code(value_, *category_);
  }

private:
  int value_ = 0;
  const std::error_category* category_ = nullptr;
};

// Turns a negative errno as io_uring reports it (cqe->res) into an error_code.
inline std::error_code errno_code(int err) noexcept {
  return std::error_code(err < 0 ? -err : err, std::system_category());
}

} // namespace couring
