// What the commands share (commands.hpp).
#include <cctype>
#include <fstream>
#include <iostream>

#include "commands.hpp"

namespace fabriclab::cli {

namespace {

std::string read_token_file(const std::string& path) {
  std::ifstream in(path);
  std::string t;
  std::getline(in, t);
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  return t;
}

}  // namespace

int fail(int code, const std::string& what) {
  std::cerr << "fabriclab: " << what << "\n";
  return code;
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

Result<client::OrchestratorClient> connect_target(const Target& t) {
  if (!t.url.empty()) {
    std::string token = t.token_file.empty() ? "" : read_token_file(t.token_file);
    if (!t.token_file.empty() && token.empty()) {
      return make_error(Condition::invalid_argument,
                        "--token-file " + t.token_file + " is empty or unreadable");
    }
    return client::OrchestratorClient::from_url(t.url, token);
  }
  FL_ASSIGN_OR_RETURN(auto lab, rack::Lab::attach(t.lab_dir));
  return client::OrchestratorClient::from_url(lab.orchestrator_url(), lab.control_token());
}

Result<rack::DrillFileSpec> drill_file_spec(const DrillArgs& a) {
  rack::DrillFileSpec spec = rack::default_spec();
  if (!a.spec_file.empty()) {
    FL_ASSIGN_OR_RETURN(spec, rack::load_spec(a.spec_file));
  }
  if (!a.hypervisor.empty()) spec.hypervisor = a.hypervisor;
  return spec;
}

int exit_for(const Error& e) {
  switch (e.condition) {
    case Condition::invalid_argument:
    case Condition::not_found:
    case Condition::already_exists:
    case Condition::unauthenticated:
    case Condition::permission_denied:
      return kBadInput;
    case Condition::cancelled:
      return kInterrupted;
    default:
      return kLabError;
  }
}

}  // namespace fabriclab::cli
