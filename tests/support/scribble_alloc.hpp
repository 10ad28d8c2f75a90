// A scribbling allocator for lifetime tests: replaces the global operator new/delete
// (every form: plain, nothrow, sized, aligned, arrays) in the test program that
// includes this header, so a freed block is overwritten before it goes back to malloc.
// Whatever the kernel reads from freed memory is then recognisable:
//  - read as bytes, a freed block is never data a test sends (tests send lowercase
//    letters; the scribble is pointer bytes and 0xDB);
//  - read as an iovec array (16-byte records), every entry points at a static zone of
//    scribble_len bytes of 0xDB, so a send through a freed iovec array delivers 0xDB
//    bytes to the peer instead of failing with EFAULT.
// Include it in exactly one translation unit of a test program. Works under ASan (the
// replaced operators call malloc/free, which ASan still intercepts and quarantines).
#pragma once

#include <malloc.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace ringsock::test {

inline constexpr unsigned char scribble_byte = 0xDB;
inline constexpr std::size_t scribble_len = 64;

/// What a freed iovec points at: scribble_len bytes of 0xDB.
inline unsigned char* scribble_zone() noexcept {
    alignas(64) static unsigned char zone[4096] = {};
    static bool filled = [] {
        std::memset(zone, scribble_byte, sizeof zone);
        return true;
    }();
    (void)filled;
    return zone;
}

/// Number of blocks scribbled so far (proves the replacement is in effect).
inline std::size_t& scribbled_blocks() noexcept {
    static std::size_t n = 0;
    return n;
}

inline void scribble(void* p) noexcept {
    if (p == nullptr) return;
    const std::size_t n = ::malloc_usable_size(p);
    auto* b = static_cast<unsigned char*>(p);
    std::memset(b, scribble_byte, n);
    // 16-byte records {zone, scribble_len} where the block is suitably aligned.
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(iovec) == 0) {
        const iovec rec{scribble_zone(), scribble_len};
        for (std::size_t off = 0; off + sizeof rec <= n; off += sizeof rec) std::memcpy(b + off, &rec, sizeof rec);
    }
    ++scribbled_blocks();
}

inline void* scribble_alloc(std::size_t n) {
    if (n == 0) n = 1;
    for (;;) {
        if (void* p = std::malloc(n)) return p;
        std::new_handler h = std::get_new_handler();
        if (!h) throw std::bad_alloc();
        h();
    }
}

inline void* scribble_alloc_aligned(std::size_t n, std::align_val_t al) {
    std::size_t a = static_cast<std::size_t>(al);
    if (a < sizeof(void*)) a = sizeof(void*);
    if (n == 0) n = 1;
    for (;;) {
        void* p = nullptr;
        if (::posix_memalign(&p, a, n) == 0) return p;
        std::new_handler h = std::get_new_handler();
        if (!h) throw std::bad_alloc();
        h();
    }
}

inline void scribble_free(void* p) noexcept {
    if (p == nullptr) return;
    scribble(p);
    std::free(p);
}

}  // namespace ringsock::test

// The replacements. Not inline (the standard requires them to be non-inline), so this
// header may be included in one translation unit per program only.
void* operator new(std::size_t n) { return ringsock::test::scribble_alloc(n); }
void* operator new[](std::size_t n) { return ringsock::test::scribble_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return ringsock::test::scribble_alloc(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return ringsock::test::scribble_alloc(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new(std::size_t n, std::align_val_t a) { return ringsock::test::scribble_alloc_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return ringsock::test::scribble_alloc_aligned(n, a); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return ringsock::test::scribble_alloc_aligned(n, a);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return ringsock::test::scribble_alloc_aligned(n, a);
    } catch (...) {
        return nullptr;
    }
}

void operator delete(void* p) noexcept { ringsock::test::scribble_free(p); }
void operator delete[](void* p) noexcept { ringsock::test::scribble_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { ringsock::test::scribble_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { ringsock::test::scribble_free(p); }
void operator delete(void* p, std::size_t) noexcept { ringsock::test::scribble_free(p); }
void operator delete[](void* p, std::size_t) noexcept { ringsock::test::scribble_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { ringsock::test::scribble_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { ringsock::test::scribble_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { ringsock::test::scribble_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { ringsock::test::scribble_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { ringsock::test::scribble_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { ringsock::test::scribble_free(p); }
