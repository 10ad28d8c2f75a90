// A scribbling allocator for lifetime tests: replaces the global operator new/delete
// (every form: plain, nothrow, sized, aligned, arrays) in the test program that
// includes this header, so a freed block is overwritten before it goes back to malloc.
// Whatever the kernel reads from freed memory is then recognisable:
//  - read as bytes, a freed block is never data a test sends (tests send lowercase
//    letters; the scribble is pointer bytes and 0xDB);
//  - read as an iovec array (16-byte records), every entry points at a static zone of
//    scribble_len bytes of 0xDB, so a send through a freed iovec array delivers 0xDB
//    bytes to the peer instead of failing with EFAULT.
// glibc writes its free-list links into the first 16 bytes of a block it gets back, so
// a scribbled block is first held in a small quarantine (the last 4096 frees) and only
// then freed: the kernel sees the scribble, not allocator metadata, for that long.
// Include it in exactly one translation unit of a test program. Under ASan the blocks go
// straight to free(): ASan's own quarantine keeps them, and its reports stay exact.
#pragma once

#include <malloc.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <atomic>
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

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool own_quarantine = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool own_quarantine = false;
#else
inline constexpr bool own_quarantine = true;
#endif
#else
inline constexpr bool own_quarantine = true;
#endif

inline void scribble_free(void* p) noexcept {
    if (p == nullptr) return;
    scribble(p);
    if constexpr (!own_quarantine) {
        std::free(p);
    } else {
        // A ring of the most recently freed blocks; the oldest one is really freed.
        static void* ring[4096] = {};
        static std::size_t next = 0;
        static std::atomic_flag lock = ATOMIC_FLAG_INIT;
        while (lock.test_and_set(std::memory_order_acquire)) {
        }
        void* old = ring[next];
        ring[next] = p;
        next = (next + 1) % 4096;
        lock.clear(std::memory_order_release);
        std::free(old);
    }
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
