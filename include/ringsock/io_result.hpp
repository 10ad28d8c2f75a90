// The result of an asynchronous operation: a value or a std::error_code, never an
// exception. A small subset of std::expected, which C++20 lacks.
#pragma once

#include <concepts>
#include <system_error>
#include <utility>

#include "error.hpp"

namespace ringsock {

namespace detail {
/// An error_code kept as its two parts. A default std::error_code calls the
/// out-of-line std::system_category() on every construction; a success here is two
/// zero words, which matters on the path every operation's result takes.
struct stored_error {
    int code = 0;
    const std::error_category* cat = nullptr;
    stored_error() noexcept = default;
    stored_error(const std::error_code& ec) noexcept  // NOLINT: implicit by design
        : code(ec.value()), cat(ec.value() != 0 ? &ec.category() : nullptr) {}
    explicit operator bool() const noexcept { return code != 0; }
    std::error_code get() const noexcept { return cat ? std::error_code(code, *cat) : std::error_code(); }
};
}  // namespace detail

/// Value or error. On an error, `value()`, `operator*` and `operator->` all throw
/// std::system_error carrying error() and naming the failed operation (what()), so
/// `*co_await sock.connect(ep)` fails loudly instead of handing out an empty object.
/// Test `has_value()` (or the bool conversion) first to avoid the exception.
/// On error the value slot still holds what the operation achieved before it failed
/// (e.g. the bytes write_all sent before EPIPE): read it, unchecked, with
/// `partial_value()`. T must be default-constructible (the value slot always exists).
template <class T>
class [[nodiscard]] io_result {
public:
    /// A success holding T{}.
    io_result() = default;
    /// A success holding `value`.
    io_result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
    /// An error; `what` names the operation and must outlive the result (a literal).
    /// The value slot holds T{}.
    io_result(std::error_code ec, const char* what = "ringsock") : ec_(ec), what_(what) {}
    /// An error that still achieved `partial` (read back with partial_value()).
    io_result(T partial, std::error_code ec, const char* what)
        : value_(std::move(partial)), ec_(ec), what_(what) {}

    /// True on success.
    bool has_value() const noexcept { return !ec_; }
    /// has_value().
    explicit operator bool() const noexcept { return has_value(); }
    /// The error (a default std::error_code on success).
    std::error_code error() const noexcept { return ec_.get(); }
    /// The name of the operation that failed, for messages.
    const char* what() const noexcept { return what_; }

    /// The value. Throws std::system_error (error(), what()) on an error.
    T& value() & { check(); return value_; }
    /// The value. Throws std::system_error (error(), what()) on an error.
    const T& value() const& { check(); return value_; }
    /// The value, moved out. Throws std::system_error (error(), what()) on an error.
    T&& value() && { check(); return std::move(value_); }
    /// Checked like value(): throws std::system_error on an error.
    T& operator*() & { check(); return value_; }
    /// Checked like value(): throws std::system_error on an error.
    const T& operator*() const& { check(); return value_; }
    /// Checked like value(): the value moved out, or throws std::system_error.
    T&& operator*() && { check(); return std::move(value_); }
    /// Member access, checked like value(): throws std::system_error on an error.
    T* operator->() { check(); return &value_; }
    /// Member access, checked like value(): throws std::system_error on an error.
    const T* operator->() const { check(); return &value_; }
    /// A copy of the value, or T(fallback) on an error (never throws system_error; a
    /// partial value is not returned).
    template <class U>
    T value_or(U&& fallback) const& { return ec_ ? T(std::forward<U>(fallback)) : value_; }

    /// Never throws: the value, or on an error what the operation achieved before it.
    T& partial_value() & noexcept { return value_; }
    /// Never throws: the value, or on an error what the operation achieved before it.
    const T& partial_value() const& noexcept { return value_; }

private:
    void check() const {
        if (ec_) throw std::system_error(ec_.get(), what_);
    }
    T value_{};
    detail::stored_error ec_{};
    const char* what_ = "ringsock";
};

/// An operation that yields nothing but success or an error.
template <>
class [[nodiscard]] io_result<void> {
public:
    /// A success.
    io_result() = default;
    /// An error; `what` names the operation and must outlive the result (a literal).
    io_result(std::error_code ec, const char* what = "ringsock") : ec_(ec), what_(what) {}
    /// True on success.
    bool has_value() const noexcept { return !ec_; }
    /// has_value().
    explicit operator bool() const noexcept { return has_value(); }
    /// The error (a default std::error_code on success).
    std::error_code error() const noexcept { return ec_.get(); }
    /// The name of the operation that failed, for messages.
    const char* what() const noexcept { return what_; }
    /// Throws std::system_error carrying error() and naming the operation, on an error.
    void value() const {
        if (ec_) throw std::system_error(ec_.get(), what_);
    }

private:
    detail::stored_error ec_{};
    const char* what_ = "ringsock";
};

}  // namespace ringsock
