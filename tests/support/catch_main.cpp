// Catch2 main shared by all test programs. A listener compares the number of open
// descriptors before and after every test case; any difference fails the program.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "support/fd_count.hpp"

namespace {

std::vector<std::string> g_leaks;

struct fd_leak_listener : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    std::size_t before_ = 0;

    void testCaseStarting(Catch::TestCaseInfo const&) override {
        before_ = ringsock::test::open_fd_count();
    }
    void testCaseEnded(Catch::TestCaseStats const& stats) override {
        std::size_t after = ringsock::test::open_fd_count();
        if (after != before_) {
            std::string msg = stats.testInfo.name + ": " + std::to_string(before_) +
                              " descriptors open before, " + std::to_string(after) + " after";
            std::fprintf(stderr, "FD LEAK in %s\n", msg.c_str());
            g_leaks.push_back(msg);
        }
    }
};

}  // namespace

CATCH_REGISTER_LISTENER(fd_leak_listener)

int main(int argc, char* argv[]) {
    // A test that provokes EPIPE must show the library never raises SIGPIPE, so the
    // default disposition (terminate) is kept on purpose: a SIGPIPE kills the test.
    int rc = Catch::Session().run(argc, argv);
    if (!g_leaks.empty()) {
        std::fprintf(stderr, "%zu test case(s) leaked descriptors\n", g_leaks.size());
        if (rc == 0) rc = 1;
    }
    return rc;
}
