#pragma once
// Shared by the report page's translation units (report_html.cpp renders the page;
// report_html_timeline.cpp draws its timelines). Not part of the public API.

#include <boost/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "fabriclab/common/json_get.hpp"

namespace fabriclab::orchestrator::report_html_detail {

// The page reads the report with the lenient getters: a missing or mistyped field renders as
// empty or "—" (report_html.cpp).
using json_get::arr;
using json_get::as_object;
using json_get::boolean;
using json_get::field;
using json_get::number;
using json_get::obj;
using json_get::str;

// `s` escaped for HTML text and attribute values, '/' included (OWASP's rule for HTML text).
std::string esc(std::string_view s);
// "12.5": up to `decimals` decimals, no trailing zeros.
std::string decimal(double v, int decimals = 3);
// decimal(*v), or "—" when there is no value.
std::string number_or_dash(std::optional<double> v, int decimals = 3);

// The "Timelines" section of report `r` (a report's JSON, report.hpp): one SVG per service.
void timelines(std::string& out, const boost::json::object& r);

}  // namespace fabriclab::orchestrator::report_html_detail
