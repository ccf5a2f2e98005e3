// fabriclab-bench-drill, internal: the run's output. `output_json` is the one JSON object of
// --json (every figure, the method, the notes); `print_text` the human text from the same figures
// (`out` is output_json's answer: the CPU windows are read from it).
#pragma once

#include "drill_cpu.hpp"
#include "drill_figures.hpp"
#include "drill_phases.hpp"

namespace fabriclab::bench_drill {

json::object output_json(BenchRun& r, const Figures& f, const CpuSampler& cpu);

void print_text(const BenchRun& r, const Figures& f, const json::object& out);

}  // namespace fabriclab::bench_drill
