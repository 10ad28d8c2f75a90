// ringsock_bench entry point; implementations register themselves from their own
// translation units (impl_*.cpp) through bench::registrar.
#include "harness.hpp"

int main(int argc, char** argv) { return bench::run_main(argc, argv); }
