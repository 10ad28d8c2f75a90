// Byte views for I/O: any contiguous range of 1-byte objects (std::string,
// std::vector<char>, std::array<std::byte, N>, std::span<unsigned char>, ...).
#pragma once

#include <cstddef>
#include <ranges>
#include <span>
#include <string_view>
#include <type_traits>

namespace ringsock {

/// A contiguous range of bytes the kernel may write into.
template <class R>
concept writable_bytes = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
    sizeof(std::ranges::range_value_t<R>) == 1 &&
    std::is_trivially_copyable_v<std::ranges::range_value_t<R>> &&
    !std::is_const_v<std::remove_reference_t<std::ranges::range_reference_t<R>>>;

/// A contiguous range of bytes the kernel may read from.
template <class R>
concept readable_bytes = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
    sizeof(std::ranges::range_value_t<R>) == 1 &&
    std::is_trivially_copyable_v<std::ranges::range_value_t<R>>;

/// The bytes of `r`, writable. The range must outlive the operation that uses it.
template <writable_bytes R>
std::span<std::byte> as_writable_bytes(R&& r) noexcept {
    return {reinterpret_cast<std::byte*>(std::ranges::data(r)), std::ranges::size(r)};
}

/// The bytes of `r`, read-only. The range must outlive the operation that uses it.
template <readable_bytes R>
std::span<const std::byte> as_bytes(const R& r) noexcept {
    return {reinterpret_cast<const std::byte*>(std::ranges::data(r)), std::ranges::size(r)};
}

inline std::span<const std::byte> as_bytes(std::string_view s) noexcept {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

}  // namespace ringsock
