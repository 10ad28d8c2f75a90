// buffered_stream over real socket pairs: lines and delimited frames split at every
// byte and across buffer edges, "\r\n" split across reads, frames over their limit,
// end of stream, time limits and stop requests mid-frame (nothing buffered is lost),
// length-prefixed frames at 0, max and max+1, reads that drain the buffer first, and
// descriptors arriving with framed bytes on an fd_stream. Every case checks that no
// descriptor leaked.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <vector>

#include <ringsock/ringsock.hpp>

#include "support/leak_guard.hpp"

namespace {

// Counts every allocation in this program, so a test can show a read allocates nothing.
std::size_t g_allocations = 0;

}  // namespace

// Every non-aligned form is replaced, so no allocation pairs ours with the runtime's
// (AddressSanitizer checks that). noinline: inlined into a caller, g++ 12 would report
// free() on a pointer from operator new.
namespace {
[[gnu::noinline]] void* counted_alloc(std::size_t n) noexcept {
    ++g_allocations;
    return std::malloc(n ? n : 1);
}
[[gnu::noinline]] void* counted_alloc_or_throw(std::size_t n) {
    if (void* p = counted_alloc(n)) return p;
    throw std::bad_alloc();
}
}  // namespace
void* operator new(std::size_t n) { return counted_alloc_or_throw(n); }
void* operator new[](std::size_t n) { return counted_alloc_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using namespace std::chrono_literals;
using ringsock::buffered_stream;
using ringsock::fd_stream;
using ringsock::framing_errc;
using ringsock::io_context;
using ringsock::io_result;
using ringsock::stream_socket;
using ringsock::task;
using ringsock::unique_fd;
using ringsock::test::fd_leak_guard;

template <class Socket>
std::pair<Socket, Socket> make_pair(io_context& ctx) {
    auto p = Socket::pair(ctx);
    REQUIRE(p);
    return std::move(*p);
}

/// Writes each chunk, pausing `gap` after each so the reader sees it alone.
template <class Socket>
task<void> feed(io_context& ctx, Socket& s, std::vector<std::string> chunks, std::chrono::milliseconds gap = 1ms) {
    for (const auto& c : chunks) {
        auto w = co_await s.write_all(c);
        REQUIRE(w);
        (void)co_await ringsock::sleep_for(ctx, gap);
    }
}

/// `text` cut at the given offsets (sorted, each inside the text).
std::vector<std::string> cut(std::string_view text, std::vector<std::size_t> at) {
    std::vector<std::string> out;
    std::size_t from = 0;
    for (std::size_t a : at) {
        out.emplace_back(text.substr(from, a - from));
        from = a;
    }
    out.emplace_back(text.substr(from));
    return out;
}

/// Reads lines until end of stream; the clean end must have nothing left over.
task<std::vector<std::string>> all_lines(buffered_stream<stream_socket>& b, std::size_t max) {
    std::vector<std::string> lines;
    for (;;) {
        auto l = co_await b.read_line(max);
        if (!l) {
            CHECK(l.error() == ringsock::errc::end_of_stream);
            CHECK(l.partial_value().empty());
            break;
        }
        lines.emplace_back(*l);
    }
    co_return lines;
}

/// A buffered_stream or write_frame operation as a task, for when_all.
template <class Op>
auto as_task(Op op) -> task<decltype(op.await_resume())> {
    co_return co_await std::move(op);
}

template <class Socket>
task<io_result<std::size_t>> write_task(Socket& s, std::string_view data) {
    co_return co_await s.write_all(data);
}

template <class Socket>
task<void> feed_and_close(io_context& ctx, Socket& s, std::vector<std::string> chunks) {
    co_await feed(ctx, s, std::move(chunks));
    REQUIRE(s.shutdown());
}

/// A pipe whose read end is sent; the write end identifies it on arrival.
struct pipe_pair {
    unique_fd r, w;
    pipe_pair() {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
        r.reset(p[0]);
        w.reset(p[1]);
    }
};

/// Whether `fd` is the same open pipe as `original` (same inode).
bool same_file(const unique_fd& fd, const unique_fd& original) {
    struct stat a {}, b {};
    return fd && ::fstat(fd.get(), &a) == 0 && ::fstat(original.get(), &b) == 0 && a.st_ino == b.st_ino &&
           a.st_dev == b.st_dev;
}

std::string as_string(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

}  // namespace

TEST_CASE("buffered_stream: read_line strips \\n and \\r\\n, keeps pipelined lines buffered, and a bare \\r stays in the line",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_all(std::string_view("one\ntwo\r\nthr\ree\n\nlast"));
        REQUIRE(w);
        auto l1 = co_await in.read_line(100);
        REQUIRE(l1);
        CHECK(*l1 == "one");
        CHECK(in.buffered() == "two\r\nthr\ree\n\nlast");  // one read took everything
        auto l2 = co_await in.read_line(100);
        REQUIRE(l2);
        CHECK(*l2 == "two");
        auto l3 = co_await in.read_line(100);
        REQUIRE(l3);
        CHECK(*l3 == "thr\ree");
        auto l4 = co_await in.read_line(100);
        REQUIRE(l4);
        CHECK(l4->empty());
        REQUIRE(a.shutdown());
        auto l5 = co_await in.read_line(100);
        CHECK(l5.error() == ringsock::errc::end_of_stream);
        CHECK(l5.partial_value() == "last");
        CHECK(in.buffered() == "last");  // EOF mid-line: the partial line is still there
    }());
}

TEST_CASE("buffered_stream: lines written byte by byte, and cut at every point, come out whole, for every buffer size",
          "[buffered_stream]") {
    fd_leak_guard guard;
    const std::string text = "alpha\r\nbe\nc\r\n\r\ndelta-epsilon\n";
    const std::vector<std::string> want{"alpha", "be", "c", "", "delta-epsilon"};
    for (std::size_t cap : {1u, 2u, 3u, 5u, 7u, 16u}) {
        DYNAMIC_SECTION("cap " << cap) {
            io_context ctx;
            // Byte by byte.
            {
                auto [a, b] = make_pair<stream_socket>(ctx);
                buffered_stream in(b, cap, 64);
                std::vector<std::string> bytes;
                for (char c : text) bytes.emplace_back(1, c);
                auto [lines, fed] = ctx.sync_wait(ringsock::when_all(all_lines(in, 20), feed_and_close(ctx, a, bytes)));
                CHECK(lines == want);
                CHECK(in.capacity() <= 64);
            }
            // Two writes, cut at every offset (so every delimiter byte meets a read boundary).
            for (std::size_t at = 1; at < text.size(); ++at) {
                auto [a, b] = make_pair<stream_socket>(ctx);
                buffered_stream in(b, cap, 64);
                auto [lines, fed] = ctx.sync_wait(ringsock::when_all(all_lines(in, 20), feed_and_close(ctx, a, cut(text, {at}))));
                INFO("cut at " << at);
                CHECK(lines == want);
            }
        }
    }
}

TEST_CASE("buffered_stream: a multi-byte delimiter split across reads and across the buffer's edge is found",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    const std::string text = "GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\n\r\n";
    for (std::size_t at = 1; at < text.size(); ++at) {
        for (std::size_t cap : {4u, 9u, 26u, 27u, 28u}) {
            auto [a, b] = make_pair<stream_socket>(ctx);
            buffered_stream in(b, cap, 256);
            auto [heads, fed] = ctx.sync_wait(ringsock::when_all(
                [&]() -> task<std::vector<std::string>> {
                    std::vector<std::string> out;
                    for (int i = 0; i < 2; ++i) {
                        auto h = co_await in.read_until("\r\n\r\n", 100);
                        REQUIRE(h);
                        out.emplace_back(*h);
                    }
                    co_return out;
                }(),
                feed(ctx, a, cut(text, {at}))));
            INFO("cut at " << at << ", capacity " << cap);
            REQUIRE(heads.size() == 2);
            CHECK(heads[0] == "GET / HTTP/1.1\r\nHost: x");
            CHECK(heads[1] == "POST /a HTTP/1.1");
            CHECK(in.buffered().empty());
        }
    }
}

TEST_CASE("buffered_stream: \\r\\n split between two reads ends the line, and the \\r is not returned",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair<stream_socket>(ctx);
    buffered_stream in(b);
    auto [lines, fed] = ctx.sync_wait(ringsock::when_all(
        [&]() -> task<std::vector<std::string>> {
            std::vector<std::string> out;
            for (int i = 0; i < 2; ++i) {
                auto l = co_await in.read_line(3);  // "abc\r\n" fits a 3-byte limit
                REQUIRE(l);
                out.emplace_back(*l);
            }
            co_return out;
        }(),
        feed(ctx, a, {"abc\r", "\nxyz\r", "\n"}, 5ms)));
    CHECK(lines == std::vector<std::string>{"abc", "xyz"});
}

TEST_CASE("buffered_stream: a line over its limit is frame_too_long, consumes nothing, and can be skipped",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_all(std::string_view("abcd\nabcd\r\nabcde\nok\n"));
        REQUIRE(w);
        auto l1 = co_await in.read_line(4);
        REQUIRE(l1);
        CHECK(*l1 == "abcd");
        auto l2 = co_await in.read_line(4);  // the \r does not count against the limit
        REQUIRE(l2);
        CHECK(*l2 == "abcd");
        auto l3 = co_await in.read_line(4);
        CHECK(l3.error() == framing_errc::frame_too_long);
        CHECK(l3.error() == std::errc::message_size);
        CHECK(l3.partial_value() == "abcde");
        CHECK(in.buffered() == "abcde\nok\n");
        auto again = co_await in.read_line(4);  // still there, still too long
        CHECK(again.error() == framing_errc::frame_too_long);
        auto skipped = co_await in.read_line(5);  // a larger limit takes it
        REQUIRE(skipped);
        CHECK(*skipped == "abcde");
        auto l4 = co_await in.read_line(4);
        REQUIRE(l4);
        CHECK(*l4 == "ok");
    }());
}

TEST_CASE("buffered_stream: a peer that never ends its line gets frame_too_long without waiting for more, bytes kept",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b, 4, 1 << 20);
    ctx.sync_wait([&]() -> task<void> {
        const std::string big(1000, 'x');
        auto w = co_await a.write_all(big);
        REQUIRE(w);
        auto l = co_await in.read_line(100, 5s);  // would hang if it waited for a newline
        CHECK(l.error() == framing_errc::frame_too_long);
        CHECK(l.partial_value().size() >= 101);
        CHECK(in.buffered() == std::string_view(big).substr(0, in.buffered().size()));
        CHECK(in.capacity() <= 128);  // grew only as far as the limit needed
        // Skip the rest of the long line: consume what is buffered until the newline.
        auto w2 = co_await a.write_all(std::string_view("\nnext\n"));
        REQUIRE(w2);
        std::size_t skipped = 0;
        for (;;) {
            auto l2 = co_await in.read_line(100);
            if (l2) break;
            REQUIRE(l2.error() == framing_errc::frame_too_long);
            skipped += in.buffered().size();
            in.consume(in.buffered().size());
        }
        auto next = co_await in.read_line(100);
        REQUIRE(next);
        CHECK(*next == "next");
        CHECK(skipped > 0);
    }());
}

TEST_CASE("buffered_stream: the buffer never grows past max_capacity; a line that cannot fit is frame_too_long",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b, 8, 32);
    ctx.sync_wait([&]() -> task<void> {
        const std::string line31(31, 'y');
        const std::string line32(32, 'z');
        std::string wire = line31 + "\n" + line32 + "\n";
        auto w = co_await a.write_all(wire);
        REQUIRE(w);
        auto l1 = co_await in.read_line(1000);  // 31 + "\n" fills the 32 bytes exactly
        REQUIRE(l1);
        CHECK(*l1 == line31);
        CHECK(in.capacity() == 32);
        auto l2 = co_await in.read_line(1000);
        CHECK(l2.error() == framing_errc::frame_too_long);
        CHECK(in.capacity() == 32);
        CHECK(in.buffered().size() == 32);
    }());
}

TEST_CASE("buffered_stream: end of stream mid-frame is end_of_stream with the partial bytes kept; between frames it has none",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        std::array<std::byte, 3> hdr{std::byte{0}, std::byte{0}, std::byte{0}};
        std::string wire = "line\n";
        wire.append(reinterpret_cast<const char*>(hdr.data()), hdr.size());
        wire += "\x09" "abc";  // a u32 length of 9, then 3 of its 9 bytes
        auto w = co_await a.write_all(wire);
        REQUIRE(w);
        REQUIRE(a.shutdown());
        auto l = co_await in.read_line(100);
        REQUIRE(l);
        CHECK(*l == "line");
        auto f = co_await in.read_frame(100);
        CHECK(f.error() == ringsock::errc::end_of_stream);
        CHECK(f.partial_value().size() == 7);
        CHECK(in.buffered().size() == 7);
        auto f2 = co_await in.read_frame(100);  // asking again changes nothing
        CHECK(f2.error() == ringsock::errc::end_of_stream);
        in.consume(7);
        auto l2 = co_await in.read_line(100);
        CHECK(l2.error() == ringsock::errc::end_of_stream);
        CHECK(l2.partial_value().empty());
    }());
}

TEST_CASE("buffered_stream: a time limit mid-frame keeps the bytes, and the next read completes the frame",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_all(std::string_view("hel"));
        REQUIRE(w);
        auto l = co_await in.read_line(100, 20ms);
        CHECK(l.error() == std::errc::timed_out);
        CHECK(l.partial_value() == "hel");
        // The limit covers the whole read, not each of its reads: bytes that trickle in
        // under the limit do not extend it.
        auto start = std::chrono::steady_clock::now();
        std::vector<std::string> trickle(3, "l");  // named: no braced list inside co_await (g++ 12)
        auto l2_fed = co_await ringsock::when_all(as_task(in.read_line(100, 60ms)), feed(ctx, a, trickle, 10ms));
        auto& l2 = std::get<0>(l2_fed);
        (void)std::get<1>(l2_fed);
        CHECK(l2.error() == std::errc::timed_out);
        CHECK(std::chrono::steady_clock::now() - start < 1s);
        CHECK(l2.partial_value() == "hellll");
        auto w2 = co_await a.write_all(std::string_view("o\n"));
        REQUIRE(w2);
        auto l3 = co_await in.read_line(100, 1s);
        REQUIRE(l3);
        CHECK(*l3 == "hellllo");

        // The same for a length-prefixed frame, cut inside its length field.
        const std::string part(3, '\0');
        auto w3 = co_await a.write_all(part);
        REQUIRE(w3);
        auto f = co_await in.read_frame(100, 20ms);
        CHECK(f.error() == std::errc::timed_out);
        CHECK(f.partial_value().size() == 3);
        auto w4 = co_await a.write_all(std::string_view("\x02hi"));
        REQUIRE(w4);
        auto f2 = co_await in.read_frame(100, 1s);
        REQUIRE(f2);
        CHECK(as_string(*f2) == "hi");
    }());
}

TEST_CASE("buffered_stream: a stop request mid-frame cancels the read, keeps the bytes, and the next read completes it",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_all(std::string_view("GET / HTTP/1.1\r\nHo"));
        REQUIRE(w);
        std::stop_source stop;
        auto h_stopped = co_await ringsock::when_all(as_task(in.read_until("\r\n\r\n", 1000, stop.get_token())),
                                                        [&]() -> task<void> {
                                                            (void)co_await ringsock::sleep_for(ctx, 10ms);
                                                            stop.request_stop();
                                                        }());
        auto& h = std::get<0>(h_stopped);
        (void)std::get<1>(h_stopped);
        CHECK(h.error() == std::errc::operation_canceled);
        CHECK(h.partial_value() == "GET / HTTP/1.1\r\nHo");
        // A token already stopped: nothing is read, nothing is lost.
        auto h2 = co_await in.read_until("\r\n\r\n", 1000, stop.get_token());
        CHECK(h2.error() == std::errc::operation_canceled);
        auto w2 = co_await a.write_all(std::string_view("st: x\r\n\r\n"));
        REQUIRE(w2);
        auto h3 = co_await in.read_until("\r\n\r\n", 1000);
        REQUIRE(h3);
        CHECK(*h3 == "GET / HTTP/1.1\r\nHost: x");
    }());
}

TEST_CASE("buffered_stream: length-prefixed frames round-trip at 0, 1, max and refuse max+1 on both sides",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b, 16, 1 << 17);
    ctx.sync_wait([&]() -> task<void> {
        // u16: 65535 is the most the length field can say.
        for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{300}, std::size_t{65535}}) {
            std::string payload(n, '\0');
            for (std::size_t i = 0; i < n; ++i) payload[i] = static_cast<char>('a' + i % 26);
            auto f_w = co_await ringsock::when_all(as_task(in.read_frame<std::uint16_t>(65535)),
                                                      as_task(ringsock::write_frame<std::uint16_t>(a, payload)));
            auto& f = std::get<0>(f_w);
            auto& w = std::get<1>(f_w);
            REQUIRE(w);
            CHECK(*w == n + 2);
            REQUIRE(f);
            CHECK(as_string(*f) == payload);
        }
        const std::string over(65536, 'q');
        auto refused = co_await ringsock::write_frame<std::uint16_t>(a, over);
        CHECK(refused.error() == framing_errc::frame_too_long);

        // u32 with a limit of 1000: 1000 passes, 1001 is refused before its payload arrives.
        const std::string p1000(1000, 'm'), p1001(1001, 'n');
        auto w1 = co_await ringsock::write_frame(a, p1000);
        REQUIRE(w1);
        auto w2 = co_await ringsock::write_frame(a, p1001);
        REQUIRE(w2);
        auto w3 = co_await ringsock::write_frame(a, std::string_view("after"));
        REQUIRE(w3);
        auto f1 = co_await in.read_frame(1000);
        REQUIRE(f1);
        CHECK(as_string(*f1) == p1000);
        auto f2 = co_await in.read_frame(1000);
        CHECK(f2.error() == framing_errc::frame_too_long);
        REQUIRE(in.buffered().size() >= 4);
        CHECK(in.buffered().substr(0, 4) == std::string_view("\0\0\x03\xe9", 4));  // its header, kept
        // Skip it: the header says how long it is.
        std::array<std::byte, 1005> skip{};
        auto s = co_await in.read_exact(skip);
        REQUIRE(s);
        auto f3 = co_await in.read_frame(1000);
        REQUIRE(f3);
        CHECK(as_string(*f3) == "after");

        // u8 frames, and a max below the field's range.
        auto w4 = co_await ringsock::write_frame<std::uint8_t>(a, std::string(255, 'z'));
        REQUIRE(w4);
        auto f4 = co_await in.read_frame<std::uint8_t>(255);
        REQUIRE(f4);
        CHECK(f4->size() == 255);
    }());
}

TEST_CASE("buffered_stream: a length-prefixed frame written byte by byte and cut at every point arrives whole",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    std::string wire("\0\0\0\x05hello\0\0\0\0\0\0\0\x02!?", 19);
    for (std::size_t cap : {1u, 4u, 6u, 9u}) {
        for (std::size_t at = 0; at <= wire.size(); ++at) {
            std::vector<std::string> chunks;
            if (at == wire.size()) {
                for (char c : wire) chunks.emplace_back(1, c);  // byte by byte
            } else if (at > 0) {
                chunks = cut(wire, {at});
            } else {
                chunks = {wire};
            }
            auto [a, b] = make_pair<stream_socket>(ctx);
            buffered_stream in(b, cap, 64);
            auto [frames, fed] = ctx.sync_wait(ringsock::when_all(
                [&]() -> task<std::vector<std::string>> {
                    std::vector<std::string> out;
                    for (int i = 0; i < 3; ++i) {
                        auto f = co_await in.read_frame(64);
                        REQUIRE(f);
                        out.push_back(as_string(*f));
                    }
                    co_return out;
                }(),
                feed(ctx, a, chunks)));
            INFO("cut at " << at << ", capacity " << cap);
            CHECK(frames == std::vector<std::string>{"hello", "", "!?"});
        }
    }
}

TEST_CASE("buffered_stream: read_some and read_exact take buffered bytes first, then read through", "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b, 16, 16);
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_all(std::string_view("head\nABCDEFGH"));
        REQUIRE(w);
        auto l = co_await in.read_line(10);
        REQUIRE(l);
        CHECK(*l == "head");
        std::array<char, 3> small{};
        auto s1 = co_await in.read_some(small);  // from the buffer, no I/O
        REQUIRE(s1);
        CHECK(std::string_view(small.data(), *s1) == "ABC");
        std::array<char, 5> rest{};
        auto s2 = co_await in.read_exact(rest);
        REQUIRE(s2);
        CHECK(std::string_view(rest.data(), rest.size()) == "DEFGH");
        CHECK(in.buffered().empty());

        // A large read_exact: 2 buffered bytes, then straight into the caller's buffer.
        std::string big(100000, '\0');
        for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
        auto w2 = co_await a.write_all(std::string_view("xy"));
        REQUIRE(w2);
        std::array<char, 1> one{};
        auto s3 = co_await in.read_some(one);  // fills the buffer with "xy", takes "x"
        REQUIRE(s3);
        CHECK(in.buffered() == "y");
        std::string got(big.size() + 1, '\0');
        auto r_w3 = co_await ringsock::when_all(as_task(in.read_exact(got)), write_task(a, big));
        auto& r = std::get<0>(r_w3);
        auto& w3 = std::get<1>(r_w3);
        REQUIRE(w3);
        REQUIRE(r);
        CHECK(got == "y" + big);
        CHECK(in.capacity() == 16);

        // End of stream part-way: the count placed, and end_of_stream.
        auto w4 = co_await a.write_all(std::string_view("12"));
        REQUIRE(w4);
        REQUIRE(a.shutdown());
        std::array<char, 4> four{};
        auto s4 = co_await in.read_exact(four);
        CHECK(s4.error() == ringsock::errc::end_of_stream);
        CHECK(s4.partial_value() == 2);
        auto s5 = co_await in.read_some(four);
        REQUIRE(s5);
        CHECK(*s5 == 0);
    }());
}

TEST_CASE("buffered_stream: a second read while one is running fails with concurrent_read and disturbs nothing",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto first_second = co_await ringsock::when_all(as_task(in.read_line(100)), [&]() -> task<io_result<std::string_view>> {
            auto r = co_await in.read_line(100);
            auto w = co_await a.write_all(std::string_view("one\n"));
            REQUIRE(w);
            co_return r;
        }());
        auto& first = std::get<0>(first_second);
        auto& second = std::get<1>(first_second);
        CHECK(second.error() == framing_errc::concurrent_read);
        REQUIRE(first);
        CHECK(*first == "one");
    }());
}

TEST_CASE("buffered_stream: in steady state a read allocates nothing, buffered or from the socket", "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        std::string lines;
        for (int i = 0; i < 200; ++i) lines += "line " + std::to_string(i) + "\n";
        auto w = co_await a.write_all(lines);
        REQUIRE(w);
        auto warm = co_await in.read_line(100);
        REQUIRE(warm);
        const std::size_t before = g_allocations;
        for (int i = 1; i < 200; ++i) {
            auto l = co_await in.read_line(100);
            REQUIRE(l);
        }
        const std::size_t buffered_allocs = g_allocations - before;
        CHECK(buffered_allocs == 0);

        // Reads that must go to the socket: the writer is in this coroutine too.
        const std::string_view msg = "ping\n";
        std::size_t before_io = 0;
        for (int i = 0; i < 100; ++i) {
            // The first round is the warm-up: read_exact's frame is larger than
            // read_line's, so the kept frame is replaced by a larger one once.
            if (i == 1) before_io = g_allocations;
            auto wi = co_await a.write_all(msg);
            REQUIRE(wi);
            auto li = co_await in.read_line(100);
            REQUIRE(li);
            std::array<char, 5> frame{};
            auto wf = co_await a.write_all(msg);
            REQUIRE(wf);
            auto ri = co_await in.read_exact(frame);
            REQUIRE(ri);
        }
        const std::size_t io_allocs = g_allocations - before_io;
        CHECK(io_allocs == 0);
    }());
}

TEST_CASE("buffered_stream: on an fd_stream each frame's descriptors come with that frame, none before, none lost",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<fd_stream>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    pipe_pair p1, p2, p3;
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        // All sent before anything is read, so reads could run frames together.
        auto w0 = co_await a.write_all(std::string_view("plain\n"));
        REQUIRE(w0);
        auto w1 = co_await a.send_fds(std::string_view("one fd\n"), p1.r);
        REQUIRE(w1);
        auto w2 = co_await a.write_all(std::string_view("none\n"));
        REQUIRE(w2);
        std::array<int, 2> two{p2.r.get(), p3.r.get()};
        auto w3 = co_await a.send_fds(std::string_view("two fds\nafter\n"), two);
        REQUIRE(w3);

        auto l0 = co_await in.read_line(100);
        REQUIRE(l0);
        CHECK(*l0 == "plain");
        CHECK(in.take_fds().empty());
        auto l1 = co_await in.read_line(100);
        REQUIRE(l1);
        CHECK(*l1 == "one fd");
        auto f1 = in.take_fds();
        REQUIRE(f1.size() == 1);
        CHECK(same_file(f1[0], p1.r));
        auto l2 = co_await in.read_line(100);
        REQUIRE(l2);
        CHECK(*l2 == "none");
        CHECK(in.take_fds().empty());
        auto l3 = co_await in.read_line(100);
        REQUIRE(l3);
        CHECK(*l3 == "two fds");
        // The receive that brought them ended inside "two fds\nafter\n": its last byte is
        // in "after", so they are tied to that line.
        auto f3 = in.take_fds();
        CHECK(f3.size() + in.buffered_fds() == 2);
        auto l4 = co_await in.read_line(100);
        REQUIRE(l4);
        auto f4 = in.take_fds();
        for (auto& fd : f4) f3.push_back(std::move(fd));
        REQUIRE(f3.size() == 2);
        CHECK(same_file(f3[0], p2.r));
        CHECK(same_file(f3[1], p3.r));
    }());
}

TEST_CASE("buffered_stream: framed writes with descriptors arrive with their frame, cut at every point of the stream",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    pipe_pair p1, p2;
    for (int split = 0; split < 3; ++split) {
        auto pair_ab = make_pair<fd_stream>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
        buffered_stream in(b, split == 0 ? 1 : 4, 64);
        ctx.sync_wait(ringsock::when_all(
            [&]() -> task<void> {
                for (int i = 0; i < 4; ++i) {
                    auto f = co_await in.read_frame<std::uint16_t>(64);
                    REQUIRE(f);
                    auto fds = in.take_fds();
                    INFO("frame " << i << ", split " << split);
                    if (i == 0) {
                        CHECK(as_string(*f) == "first");
                        REQUIRE(fds.size() == 1);
                        CHECK(same_file(fds[0], p1.r));
                    } else if (i == 2) {
                        CHECK(as_string(*f) == "third");
                        REQUIRE(fds.size() == 1);
                        CHECK(same_file(fds[0], p2.r));
                    } else {
                        CHECK(fds.empty());
                    }
                }
            }(),
            [&]() -> task<void> {
                auto w1 = co_await ringsock::write_frame<std::uint16_t>(a, std::string_view("first"), p1.r);
                REQUIRE(w1);
                if (split == 2) (void)co_await ringsock::sleep_for(ctx, 2ms);
                auto w2 = co_await ringsock::write_frame<std::uint16_t>(a, std::string_view("second"));
                REQUIRE(w2);
                auto w3 = co_await ringsock::write_frame<std::uint16_t>(a, std::string_view("third"), p2.r);
                REQUIRE(w3);
                auto w4 = co_await ringsock::write_frame<std::uint16_t>(a, std::string_view(""));
                REQUIRE(w4);
            }()));
        CHECK(in.buffered_fds() == 0);
    }
}

TEST_CASE("buffered_stream: descriptors of a frame that errors stay buffered, and close with the buffered_stream",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<fd_stream>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    pipe_pair p1, p2;
    {
        buffered_stream in(b);
        ctx.sync_wait([&]() -> task<void> {
            auto w1 = co_await a.send_fds(std::string_view("far too long a line\n"), p1.r);
            REQUIRE(w1);
            auto l = co_await in.read_line(5);
            CHECK(l.error() == framing_errc::frame_too_long);
            CHECK(in.buffered_fds() == 1);
            CHECK(in.take_fds().empty());
            in.consume(in.buffered().size());  // skip it: its descriptor is ours now
            auto fds = in.take_fds();
            REQUIRE(fds.size() == 1);
            CHECK(same_file(fds[0], p1.r));

            // Time limit and end of stream mid-frame with a descriptor: kept.
            auto w2 = co_await a.send_fds(std::string_view("part"), p2.r);
            REQUIRE(w2);
            auto t = co_await in.read_line(100, 10ms);
            CHECK(t.error() == std::errc::timed_out);
            CHECK(in.buffered_fds() == 1);
            REQUIRE(a.shutdown());
            auto e = co_await in.read_line(100);
            CHECK(e.error() == ringsock::errc::end_of_stream);
            CHECK(e.partial_value() == "part");
            CHECK(in.buffered_fds() == 1);
        }());
        // `in` goes with a descriptor still buffered: the guard proves it was closed.
    }
    CHECK(b.queued_fds() == 0);
}

TEST_CASE("buffered_stream: descriptors over the stream's fd_limit are closed and reported, the bytes kept",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<fd_stream>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    pipe_pair p1, p2;
    b.set_fd_limit(1);
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto w1 = co_await a.send_fds(std::string_view("a"), p1.r);
        REQUIRE(w1);
        auto l1 = co_await in.read_line(10, 10ms);  // keeps one descriptor for "a"
        CHECK(l1.error() == std::errc::timed_out);
        auto w2 = co_await a.send_fds(std::string_view("b\n"), p2.r);
        REQUIRE(w2);
        auto l2 = co_await in.read_line(10);  // a second one would be over the limit
        CHECK(l2.error() == ringsock::errc::fds_truncated);
        CHECK(in.buffered() == "ab\n");
        auto l3 = co_await in.read_line(10);
        REQUIRE(l3);
        CHECK(*l3 == "ab");
        auto fds = in.take_fds();
        REQUIRE(fds.size() == 1);
        CHECK(same_file(fds[0], p1.r));
    }());
}

TEST_CASE("buffered_stream: destroying a read mid-frame settles it, frees the buffered_stream, and keeps the bytes",
          "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto pair_ab = make_pair<stream_socket>(ctx); auto& a = pair_ab.first; auto& b = pair_ab.second;  // clang 14: lambdas cannot capture structured bindings
    buffered_stream in(b);
    ctx.sync_wait([&]() -> task<void> {
        auto w = co_await a.write_all(std::string_view("par"));
        REQUIRE(w);
        bool finished = false;
        {
            auto body = [&]() -> task<void> {  // named: the task refers to it while it runs
                (void)co_await in.read_line(100);
                finished = true;
            };
            auto reader = body();
            reader.handle().resume();  // runs until the read waits for the socket
            (void)co_await ringsock::sleep_for(ctx, 5ms);
            CHECK_FALSE(finished);
        }  // destroyed while its read is in flight
        CHECK(in.buffered() == "par");
        auto w2 = co_await a.write_all(std::string_view("tial\n"));
        REQUIRE(w2);
        auto l = co_await in.read_line(100, 1s);
        REQUIRE(l);
        CHECK(*l == "partial");
    }());
}

TEST_CASE("buffered_stream: an empty delimiter, or one longer than max_capacity, is invalid_argument", "[buffered_stream]") {
    fd_leak_guard guard;
    io_context ctx;
    auto [a, b] = make_pair<stream_socket>(ctx);
    buffered_stream in(b, 2, 4);
    ctx.sync_wait([&]() -> task<void> {
        auto e = co_await in.read_until("", 10);
        CHECK(e.error() == std::errc::invalid_argument);
        auto l = co_await in.read_until("12345", 10);
        CHECK(l.error() == std::errc::invalid_argument);
        auto f = co_await in.read_frame<std::uint64_t>(10);  // an 8-byte length cannot fit
        CHECK(f.error() == std::errc::invalid_argument);
    }());
}
