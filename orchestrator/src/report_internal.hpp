#pragma once
// Shared by the report's translation units (report.cpp builds the report; report_guest.cpp adds
// the guest-health fields and checks). Not part of the public API.

#include <string>
#include <string_view>
#include <vector>

#include "fabriclab/orchestrator/report.hpp"

namespace fabriclab::orchestrator::report_detail {

// "a, b, c and 4 more" (at most 20 items named).
std::string name_list(const std::vector<std::string>& items);

// {"name", "passed", "detail"}
json::object check(std::string_view name, bool passed, std::string detail);

// Adds the instance's guest-health fields (report.hpp, "instances") to its JSON object.
void add_guest_fields(const ReportInstance& i, json::object& o);

// Appends "guests healthy after restart" and "data kept (data check)" when they apply.
void add_guest_checks(const ReportInput& in, json::array& checks);

}  // namespace fabriclab::orchestrator::report_detail
