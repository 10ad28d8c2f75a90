// when_any: race several tasks; the first to finish wins and the others are cancelled.
#pragma once

#include <array>
#include <cstddef>
#include <exception>
#include <optional>
#include <stop_token>
#include <utility>
#include <variant>

#include "detail/stop_forwarder.hpp"
#include "detail/when_group.hpp"
#include "task.hpp"

namespace ringsock {

/// The result of when_any: index() is the winner's position among the arguments, and
/// the alternative at that index its value (std::monostate for task<void>).
template <class... R>
using when_any_result = std::variant<R...>;

namespace detail {

template <class... R>
struct any_state : group_base {
    std::optional<std::variant<R...>> result;
    std::exception_ptr error;
    bool decided = false;
    std::stop_source* source = nullptr;

    bool claim() noexcept {
        if (decided) return false;
        decided = true;
        return true;
    }
};

template <std::size_t I, class T, class State>
group_child run_any_child(task<T> t, State* st) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(t);
            if (st->claim()) st->result.emplace(std::in_place_index<I>);
        } else {
            auto&& v = co_await std::move(t);
            if (st->claim()) st->result.emplace(std::in_place_index<I>, std::forward<decltype(v)>(v));
        }
    } catch (...) {
        if (st->claim()) st->error = std::current_exception();
    }
    // The first child to finish asks the others to stop; later ones find it stopped.
    st->source->request_stop();
}

}  // namespace detail

/// Runs the children concurrently and yields the result of the first one to finish, as
/// a when_any_result (a std::variant whose index() says which child won). A child is a
/// callable taking std::stop_token and returning task<T> (or a task<T>, which cannot be
/// cancelled and so must end by itself). When the first child finishes, the token given
/// to the callables is stopped, so the losers' operations end with operation_canceled;
/// when_any resumes only after every loser has finished too, and their results are
/// discarded. If a loser's operation had completed anyway (e.g. a read that got bytes in
/// the same loop turn), that result is lost as well: record it inside the child if it
/// matters. If the winner threw, its exception is rethrown. `parent` stops all children.
///
///   auto r = co_await ringsock::when_any(
///       [&](std::stop_token st) { return read_request(sock, st); },
///       [&](std::stop_token st) { return wait_for_signal(signals, st); });
///   if (r.index() == 0) { auto& req = std::get<0>(r); ... }
///
/// Callables are moved in and kept alive until their tasks end.
template <class... A>
    requires(sizeof...(A) > 0 && (detail::group_child_arg<A> && ...))
task<when_any_result<detail::group_child_value_t<A>...>> when_any(std::stop_token parent, A... args) {
    std::stop_source source;
    detail::stop_forwarder link(parent, source);
    detail::any_state<detail::group_child_value_t<A>...> st;
    st.source = &source;
    {
        std::stop_token token = source.get_token();
        auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
            return std::array<detail::group_frame, sizeof...(A)>{
                detail::group_frame(detail::run_any_child<I>(detail::make_group_task(args, token), &st), &st)...};
        }(std::index_sequence_for<A...>{});
        detail::group_awaiter<sizeof...(A)> all(&st, children);
        co_await all;
    }
    if (st.error) std::rethrow_exception(st.error);
    co_return std::move(*st.result);
}

/// when_any without a parent token.
template <class... A>
    requires(sizeof...(A) > 0 && (detail::group_child_arg<A> && ...))
task<when_any_result<detail::group_child_value_t<A>...>> when_any(A... args) {
    return when_any(std::stop_token{}, std::move(args)...);
}

}  // namespace ringsock
