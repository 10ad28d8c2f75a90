// Tests for io_result<T> (value or error, partial values, value(), operator* and
// operator-> throwing a system_error that names the operation) and ringsock's own
// error codes.
#include <catch2/catch.hpp>

#include <ringsock/error.hpp>
#include <ringsock/io_result.hpp>
#include <ringsock/ringsock.hpp>

#include <sys/socket.h>

#include <cstddef>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include "support/process.hpp"

namespace {

using ringsock::io_result;

/// What value() throws, caught so its code and message can be inspected.
template <class R>
std::system_error thrown_by_value(R&& r) {
    try {
        (void)std::forward<R>(r).value();
    } catch (const std::system_error& e) {
        return e;
    }
    FAIL("value() did not throw std::system_error");
    return std::system_error(std::error_code{});
}

const ringsock::errc all_errcs[] = {
    ringsock::errc::message_truncated, ringsock::errc::fds_truncated,  ringsock::errc::end_of_stream,
    ringsock::errc::path_not_a_socket, ringsock::errc::stream_broken, ringsock::errc::too_many_fds,
};

}  // namespace

TEST_CASE("io_result: a value is accessible every way and means success", "[io_result]") {
    io_result<int> r = 42;
    REQUIRE(r.has_value());
    REQUIRE(static_cast<bool>(r));
    REQUIRE_FALSE(r.error());
    REQUIRE(r.value() == 42);
    REQUIRE(*r == 42);
    REQUIRE(r.partial_value() == 42);
    REQUIRE(r.value_or(7) == 42);
    REQUIRE_NOTHROW(r.value());

    r.value() = 43;
    REQUIRE(*r == 43);

    const io_result<std::string> s = std::string("abc");
    REQUIRE(s->size() == 3);
    REQUIRE(s.value() == "abc");
    REQUIRE(*s == "abc");
}

TEST_CASE("io_result: a default-constructed result is a default value, not an error", "[io_result]") {
    io_result<std::size_t> r;
    REQUIRE(r.has_value());
    REQUIRE(r.value() == 0);
}

TEST_CASE("io_result: an error carries its code and the operation's name", "[io_result]") {
    io_result<std::size_t> r(std::make_error_code(std::errc::connection_reset), "read_some");
    REQUIRE_FALSE(r.has_value());
    REQUIRE_FALSE(static_cast<bool>(r));
    REQUIRE(r.error() == std::errc::connection_reset);
    REQUIRE(std::string(r.what()) == "read_some");
    REQUIRE(r.partial_value() == 0);
    REQUIRE(r.value_or(99u) == 99u);
}

TEST_CASE("io_result: value() on an error throws std::system_error naming the operation", "[io_result]") {
    const auto ec = std::make_error_code(std::errc::broken_pipe);

    io_result<std::size_t> r(ec, "write_all");
    auto e = thrown_by_value(r);
    REQUIRE(e.code() == ec);
    std::string what = e.what();
    REQUIRE(what.find("write_all") != std::string::npos);
    REQUIRE(what.find(ec.message()) != std::string::npos);

    const io_result<std::size_t> cr(ec, "const_op");
    REQUIRE(std::string(thrown_by_value(cr).what()).find("const_op") != std::string::npos);

    REQUIRE(std::string(thrown_by_value(io_result<int>(ec, "rvalue_op")).what()).find("rvalue_op") !=
            std::string::npos);

    REQUIRE_THROWS_AS(r.value(), std::system_error);
    REQUIRE_THROWS_WITH(r.value(), Catch::Contains("write_all"));
}

TEST_CASE("io_result: an error without a name still throws with the library's name", "[io_result]") {
    io_result<int> r(std::make_error_code(std::errc::invalid_argument));
    REQUIRE(std::string(r.what()) == "ringsock");
    REQUIRE_THROWS_WITH(r.value(), Catch::Contains("ringsock"));
}

TEST_CASE("io_result: partial_value() keeps what an operation achieved before failing", "[io_result]") {
    io_result<std::size_t> r(std::size_t{1234}, std::make_error_code(std::errc::broken_pipe), "write_all");
    REQUIRE_FALSE(r.has_value());
    REQUIRE(r.partial_value() == 1234);
    REQUIRE(r.error() == std::errc::broken_pipe);
    REQUIRE_THROWS_AS(r.value(), std::system_error);

    io_result<std::size_t> eos(std::size_t{3}, make_error_code(ringsock::errc::end_of_stream), "read_exact");
    REQUIRE(eos.partial_value() == 3);
    REQUIRE(eos.error() == ringsock::errc::end_of_stream);
}

TEST_CASE("io_result: operator* and operator-> on an error throw what value() throws", "[io_result]") {
    const auto ec = std::make_error_code(std::errc::connection_refused);
    io_result<std::string> r(ec, "connect");
    const io_result<std::string>& cr = r;
    // Named matchers: a combined matcher only points at its parts.
    const auto names_op = Catch::Contains("connect");
    const auto names_error = Catch::Contains(ec.message());

    REQUIRE_THROWS_AS(*r, std::system_error);
    REQUIRE_THROWS_WITH(*r, names_op && names_error);
    REQUIRE_THROWS_WITH(*cr, names_op && names_error);
    REQUIRE_THROWS_WITH(*std::move(r), names_op && names_error);
    REQUIRE_THROWS_WITH(r->size(), names_op && names_error);
    REQUIRE_THROWS_WITH(cr->size(), names_op && names_error);
    try {
        (void)*r;
    } catch (const std::system_error& e) {
        REQUIRE(e.code() == ec);
    }
    // partial_value() is the unchecked way in, for what an operation achieved.
    REQUIRE_NOTHROW(r.partial_value());
    REQUIRE(r.partial_value().empty());
}

TEST_CASE("io_result: value() on an error has the error's message and the operation in what()", "[io_result]") {
    const auto ec = make_error_code(ringsock::errc::end_of_stream);
    io_result<std::size_t> r(std::size_t{3}, ec, "read_exact");
    REQUIRE_THROWS_WITH(r.value(), Catch::Contains("read_exact") && Catch::Contains(ec.message()));
    io_result<void> v(ec, "shutdown");
    REQUIRE_THROWS_WITH(v.value(), Catch::Contains("shutdown") && Catch::Contains(ec.message()));
}

TEST_CASE("io_result: dereferencing a refused connect throws instead of crashing", "[io_result][connect]") {
    namespace rt = ringsock::test;
    rt::temp_dir dir;
    auto ep = ringsock::endpoint::path(dir.file("stale.sock")).value();
    {  // a socket file whose listener has gone: connect is refused
        ringsock::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::bind(fd.get(), ep.data(), ep.size()) == 0);
        REQUIRE(::listen(fd.get(), 1) == 0);
    }
    ringsock::io_context ctx;
    auto client = [&]() -> ringsock::task<std::size_t> {
        ringsock::stream_socket sock = *co_await ringsock::stream_socket::connect(ctx, ep);
        const std::string hello = "hello";
        auto w = co_await sock.write_all(hello);
        co_return w.partial_value();
    };
    REQUIRE_THROWS_WITH(ctx.sync_wait(client()),
                        Catch::Contains("connect") &&
                            Catch::Contains(std::make_error_code(std::errc::connection_refused).message()));
}

TEST_CASE("io_result: holds move-only values and moves them out", "[io_result]") {
    io_result<std::unique_ptr<int>> r = std::make_unique<int>(5);
    REQUIRE(r.has_value());
    std::unique_ptr<int> p = std::move(r).value();
    REQUIRE(p != nullptr);
    REQUIRE(*p == 5);

    io_result<std::unique_ptr<int>> e(std::make_error_code(std::errc::timed_out), "accept");
    REQUIRE_THROWS_AS(std::move(e).value(), std::system_error);
}

TEST_CASE("io_result<void>: success or an error that value() throws", "[io_result]") {
    io_result<void> ok;
    REQUIRE(ok.has_value());
    REQUIRE(static_cast<bool>(ok));
    REQUIRE_FALSE(ok.error());
    REQUIRE_NOTHROW(ok.value());

    io_result<void> bad(std::make_error_code(std::errc::operation_canceled), "sleep");
    REQUIRE_FALSE(bad.has_value());
    REQUIRE_FALSE(static_cast<bool>(bad));
    REQUIRE(bad.error() == std::errc::operation_canceled);
    REQUIRE(std::string(bad.what()) == "sleep");
    auto e = thrown_by_value(bad);
    REQUIRE(e.code() == std::errc::operation_canceled);
    REQUIRE(std::string(e.what()).find("sleep") != std::string::npos);
}

TEST_CASE("errc: codes belong to the ringsock category and convert implicitly", "[io_result][errc]") {
    std::error_code ec = ringsock::errc::end_of_stream;  // is_error_code_enum
    REQUIRE(ec.category() == ringsock::error_category());
    REQUIRE(std::string(ec.category().name()) == "ringsock");
    REQUIRE(ec.value() == static_cast<int>(ringsock::errc::end_of_stream));
    REQUIRE(ec == ringsock::errc::end_of_stream);
    REQUIRE(ec != ringsock::errc::stream_broken);
    REQUIRE(static_cast<bool>(ec));
    REQUIRE(make_error_code(ringsock::errc::fds_truncated) == ringsock::errc::fds_truncated);
    // No code is 0: 0 would read as success.
    for (auto e : all_errcs) REQUIRE(static_cast<int>(e) != 0);
}

TEST_CASE("errc: every code has its own non-empty message", "[io_result][errc]") {
    std::set<std::string> messages;
    for (auto e : all_errcs) {
        std::string m = make_error_code(e).message();
        REQUIRE_FALSE(m.empty());
        REQUIRE(m != "unknown ringsock error");
        messages.insert(m);
    }
    REQUIRE(messages.size() == std::size(all_errcs));
    REQUIRE(make_error_code(ringsock::errc::message_truncated).message().find("truncated") != std::string::npos);
    REQUIRE(make_error_code(ringsock::errc::end_of_stream).message().find("end of stream") != std::string::npos);
    REQUIRE(ringsock::error_category().message(0) == "unknown ringsock error");
    REQUIRE(ringsock::error_category().message(1000) == "unknown ringsock error");
}

TEST_CASE("errc: codes map to the generic conditions callers test for", "[io_result][errc]") {
    using ringsock::errc;
    // A path that is not a socket is "file exists" to generic code.
    REQUIRE(make_error_code(errc::path_not_a_socket) == std::errc::file_exists);
    REQUIRE(make_error_code(errc::path_not_a_socket).default_error_condition() ==
            std::error_condition(std::errc::file_exists));
    // Too many descriptors in one message is E2BIG.
    REQUIRE(make_error_code(errc::too_many_fds) == std::errc::argument_list_too_long);

    // The others are only themselves.
    for (auto e : {errc::message_truncated, errc::fds_truncated, errc::end_of_stream, errc::stream_broken}) {
        auto cond = make_error_code(e).default_error_condition();
        REQUIRE(cond.category() == ringsock::error_category());
        REQUIRE(cond.value() == static_cast<int>(e));
    }
    REQUIRE(make_error_code(errc::end_of_stream) != std::errc::file_exists);
    REQUIRE(make_error_code(errc::stream_broken) != std::errc::broken_pipe);

    // And a system_error built from one carries both the code and its message.
    std::system_error se(make_error_code(errc::stream_broken), "write_all");
    REQUIRE(se.code() == errc::stream_broken);
    REQUIRE(std::string(se.what()).find("write_all") != std::string::npos);
    REQUIRE(std::string(se.what()).find("stream broken") != std::string::npos);
}
