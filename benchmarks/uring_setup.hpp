// Ring set-up shared by the raw io_uring baselines: the settings FACTS.md found
// fastest (SINGLE_ISSUER|DEFER_TASKRUN, CQ sized by the caller, registered ring fd),
// falling back to a plain ring when the kernel refuses.
#pragma once

#include <liburing.h>

#include <system_error>

namespace bench {

// Initialises `r`; returns false when SINGLE_ISSUER|DEFER_TASKRUN was asked for but
// refused (the ring is then a plain one).  Throws std::system_error if no ring at all.
inline bool init_uring(io_uring& r, unsigned entries, unsigned cq_entries, bool defer_taskrun) {
  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE | (defer_taskrun ? IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN : 0U);
  p.cq_entries = cq_entries;
  int rc = io_uring_queue_init_params(entries, &r, &p);
  const bool got = rc >= 0 || !defer_taskrun;
  if (rc < 0 && defer_taskrun) {
    p = io_uring_params{};
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = cq_entries;
    rc = io_uring_queue_init_params(entries, &r, &p);
  }
  if (rc < 0) throw std::system_error(-rc, std::generic_category(), "io_uring_queue_init_params");
  io_uring_register_ring_fd(&r);  // optional speed-up; ignore failure
  return got;
}

}  // namespace bench
