// The `fabriclab` command's parts: one run_* function per command (each in its own file under
// cli/), their arguments as CLI11 fills them in main.cpp, and what the commands share: exit codes,
// error printing, the orchestrator to talk to.
//
// Exit codes: 0 ok (a drill passed), 1 the drill failed, 2 bad input, 3 no placement (plan) or a
// lab/orchestrator error, 130 interrupted.
#pragma once

#include <string>
#include <vector>

#include "fabriclab/client/api_client.hpp"
#include "fabriclab/common/result.hpp"
#include "fabriclab/rack/image_library.hpp"
#include "fabriclab/rack/lab.hpp"

namespace fabriclab::cli {

constexpr int kFailed = 1;
constexpr int kBadInput = 2;
constexpr int kRefused = 3;
constexpr int kLabError = 3;
constexpr int kInterrupted = 130;

// Prints "fabriclab: WHAT" to stderr and returns `code`.
int fail(int code, const std::string& what);
// The exit code for an error: bad input, interrupted, or a lab/orchestrator error.
int exit_for(const Error& e);
bool write_file(const std::string& path, const std::string& text);

// The orchestrator to talk to: --orchestrator URL + --token-file, else the local lab's.
struct Target {
  std::string url, token_file, lab_dir = "/tmp/flab";
};
Result<client::OrchestratorClient> connect_target(const Target& t);

// plan (plan.cpp)
struct PlanArgs {
  std::string rack = "3x2", cluster_file;
  int capacity = 8, ud_count = 5, max_parallel = 0;
  std::vector<std::string> services = {"hello:1", "web:2", "worker:3"};
  bool json_out = false;
};
int run_plan(const PlanArgs& a);

// drill and lab up (drill.cpp, lab.cpp)
struct DrillArgs {
  std::string spec_file, hypervisor, report_file, html_file, images, orchestrator_url, token_file;
  std::vector<std::string> image_dirs;  // --image-dir, repeatable
  std::string image_library;            // --image-library; "": the default library
  std::string network = "auto";
  std::string lab_dir = "/tmp/flab";
  int port = 0;
  bool keep = false, json_out = false;
};
int run_drill_cmd(const DrillArgs& a);
// The drill spec the flags name: --spec's file (or the default drill), with --hypervisor applied.
Result<rack::DrillFileSpec> drill_file_spec(const DrillArgs& a);
// The local rack's options from the drill/lab flags.
rack::LabOptions lab_options(const DrillArgs& a);
// The rack's network, and what clients of its guests reach, one line each (docs/clients.md).
std::string network_line(const rack::Lab& lab);
std::string guest_network_line(const rack::Lab& lab);

// lab up | down | status (lab.cpp)
int run_lab_up(const DrillArgs& a);
int run_lab_down(const std::string& dir);
int run_lab_status(const std::string& dir);
// One host's power control (rack::Lab::power_off/power_on): 0 done (off: confirmed gone), 2 no
// lab or no such host, 3 it could not be done (the message says what is left).
int run_lab_power(const std::string& dir, const std::string& host, bool on, int timeout_ms);

// status and watch (status.cpp, watch.cpp)
int run_status(const Target& t, bool json_out);
int run_watch(const Target& t, bool once);

// image add | list | remove (image.cpp)
struct ImageArgs {
  rack::ImageAddRequest add;
  std::string library;
  bool json_out = false;
};
int run_image_add(const ImageArgs& a);
int run_image_list(const ImageArgs& a);
int run_image_remove(const ImageArgs& a);

}  // namespace fabriclab::cli
