#pragma once
// Shared by the report's translation units (report.cpp builds the report; report_guest.cpp adds
// the guest-health fields and checks; report_traffic.cpp reads the client traffic). Not part of the
// public API.

#include <string>
#include <string_view>
#include <vector>

#include "fabriclab/orchestrator/report.hpp"

namespace fabriclab::orchestrator::report_detail {

// "a, b, c and 4 more" (at most 20 items named).
std::string name_list(const std::vector<std::string>& items);

// {"name", "passed", "detail"}
json::object check(std::string_view name, bool passed, std::string detail);

// Milliseconds as seconds.
double seconds(int64_t ms);
// `v` rounded to a multiple of 1/scale.
double round_to(double v, double scale);
// "12.5": seconds, up to 3 decimals, no trailing zeros.
std::string format_seconds(int64_t ms);
// `v`, or null when it is negative (unknown).
json::value int_or_null(int64_t v);

// The per-service `traffic` object of the JSON (report.hpp); `checked`: whether "clients kept
// served" judges it.
json::object traffic_json(const ReportInput& in, const ReportTraffic& t, const TrafficSummary& m,
                          bool checked);
// Whether "clients kept served" judges this service: it promises uninterrupted service.
bool promises_clients(const ReportService& s, const ServiceAvailability& a);
// One line on what the service's clients saw, for the services table and the check.
std::string traffic_note(const ReportService& s, const ServiceAvailability& a,
                         const TrafficSummary& m);

// Adds the instance's guest-health fields (report.hpp, "instances") to its JSON object.
void add_guest_fields(const ReportInstance& i, json::object& o);

// Appends "guests healthy after restart" and "data kept (data check)" when they apply.
void add_guest_checks(const ReportInput& in, json::array& checks);

}  // namespace fabriclab::orchestrator::report_detail
