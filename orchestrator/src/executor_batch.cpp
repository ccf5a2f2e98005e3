// One batch of the walk (executor.cpp has the walk around it): one thread per host, each starting
// the host's operation on its agent (or reattaching to the job the agent already has) and polling
// it to its end; then the results are judged together, the progress journaled, and the hosts
// waited for until Ready and healthy again.

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

#include "controller_impl.hpp"
#include "fabriclab/common/json_get.hpp"
#include "fabriclab/common/logging.hpp"

namespace fabriclab::orchestrator {

namespace {
auto log() { return logger("orchestrator"); }

// A `drill.host` event: the host's status in its batch, and `key`: `value` (its job, or why it
// was skipped).
json::object host_event(const std::string& drill, const std::string& host, int batch,
                        const std::string& status, const char* key, const std::string& value) {
  return {{"drill", drill}, {"host", host}, {"batch", batch}, {"status", status}, {key, value}};
}
}  // namespace

Result<json::object> Controller::Impl::run_host(DrillRun& d, BatchRun& b,
                                                const std::string& host_id) {
  auto c = client(host_id);
  std::string job_id;
  {
    std::lock_guard lock(mu);
    job_id = d.progress[host_id].job;
  }
  // Reattach: a job of this drill the agent already has (accepted before a restart).
  if (job_id.empty()) {
    if (auto jobs = c->jobs(); jobs.ok()) {
      for (const auto& v : *jobs) {
        if (!v.is_object()) continue;
        const auto& j = v.as_object();
        const auto* req = j.if_contains("request");
        if (!req || !req->is_object()) continue;
        if (json_get::str(req->as_object(), "kind") != d.spec.kind ||
            json_get::str(req->as_object(), "target") != d.spec.target)
          continue;
        if (json_get::str(j, "started_at") <
            rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(d.started_ms))))
          continue;
        job_id = json_get::str(j, "id");
      }
    }
  }
  if (job_id.empty()) {
    json::object req{
        {"kind", d.spec.kind},
        {"target", d.spec.target},
        {"notice_ms",
         std::min<int64_t>(
             d.notice_ms > 0 ? d.notice_ms : scaled(d.spec.notice_s, d.spec.time_scale).count(),
             15 * 60 * 1000)},
        {"freeze_ms",
         std::min<int64_t>(scaled(d.spec.freeze_s, d.spec.time_scale).count(), 30 * 1000)}};
    if (d.spec.memory_preserving) req["memory_preserving"] = true;
    ++agent_calls;
    auto job = c->start_operation(req);
    if (!job.ok()) {
      ++agent_call_failures;
      return make_error(job.error().condition,
                        "host '" + host_id + "': the update did not start: " + job.error().message);
    }
    job_id = json_get::str(*job, "id");
  }
  Journal::HostProgress p;
  {
    std::lock_guard lock(mu);
    auto& pr = d.progress[host_id];
    pr.status = "running";
    pr.job = job_id;
    pr.batch = b.index;
    p = pr;
  }
  (void)journal->set_host_progress(d.id, p);
  publish({{"drill.host", host_event(d.id, host_id, b.index, "running", "job", job_id)}});
  // Poll the job until it ends; an agent that stops answering for too long fails the host.
  auto last_answer = Clock::now();
  while (!stopping) {
    ++agent_calls;
    auto j = c->job(job_id);
    if (j.ok()) {
      last_answer = Clock::now();
      std::string status = json_get::str(*j, "status");
      if (status == "succeeded") return std::move(j).value();
      if (status == "failed" || status == "cancelled") {
        // The job's per-guest records (notice, stop method, rollback) go into the report too.
        std::lock_guard lock(mu);
        d.progress[host_id].detail = *j;
        return make_error(Condition::internal, "host '" + host_id + "': job " + job_id + " " +
                                                   status + ": " + json_get::str(*j, "error"));
      }
    } else {
      ++agent_call_failures;
      if (j.error().condition == Condition::not_found) {
        return make_error(Condition::not_found,
                          "host '" + host_id + "': the agent lost job " + job_id);
      }
      if (Clock::now() - last_answer > opt.unhealthy_after) {
        return make_error(
            Condition::transient,
            "host '" + host_id + "' stopped answering during its update: " + j.error().message);
      }
    }
    std::unique_lock lock(mu);
    cv.wait_for(lock, opt.poll, [this] { return stopping.load(); });
  }
  return make_error(Condition::cancelled, "the orchestrator is stopping");
}

Status Controller::Impl::run_batch(DrillRun& d, BatchRun& b) {
  std::vector<std::string> todo;
  std::vector<std::pair<std::string, std::string>> skipped;  // host, why
  json::object bj;
  {
    std::lock_guard lock(mu);
    for (const auto& h : b.hosts) {
      auto& p = d.progress[h];
      if (p.status == "done" || p.status == "skipped") continue;
      auto it = hosts.find(h);
      if (p.status != "running" && it != hosts.end() && !it->second.reachable) {
        p.status = "skipped";
        const Host* host = cluster.find_host(h);
        skipped.emplace_back(h, std::string(host ? to_string(host->state) : "Unreachable") +
                                    " when its batch began");
        continue;
      }
      todo.push_back(h);
    }
    b.status = "running";
    if (!b.started_ms) b.started_ms = unix_ms();
    bj = batch_json_locked(d, b);
  }
  for (const auto& [h, why] : skipped) {
    Journal::HostProgress p;
    {
      std::lock_guard lock(mu);
      p = d.progress[h];
      d.notes.push_back("host " + h + " skipped: " + why);
    }
    (void)journal->set_host_progress(d.id, p);
    publish({{"drill.host", host_event(d.id, h, b.index, "skipped", "reason", why)}});
  }
  save_drill(d);
  publish({{"drill.batch", bj}});
  log()->info("[drill:{}] batch {}/{}: {}", d.id, b.index + 1, d.batches.size(),
              fmt::join(b.hosts, ", "));

  // One thread per host of the batch. Each host's end is journaled and published as it comes
  // (a host whose job is over is out of maintenance: the live view and the chaos checkers see it
  // so while its batch waits for a slower host); the batch is judged once all are over.
  std::vector<Result<json::object>> results(todo.size(),
                                            make_error(Condition::internal, "not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < todo.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = run_host(d, b, todo[i]);
      if (!results[i].ok() && results[i].error().condition == Condition::cancelled) return;
      Journal::HostProgress p;
      {
        std::lock_guard lock(mu);
        auto& pr = d.progress[todo[i]];
        if (results[i].ok()) {
          pr.status = "done";
          pr.detail = *results[i];
        } else {
          pr.status = "failed";
          pr.detail["error"] = results[i].error().message;  // beside the failed job's record
        }
        p = pr;
      }
      (void)journal->set_host_progress(d.id, p);
      publish({{"drill.host", host_event(d.id, todo[i], b.index, p.status, "job", p.job)}});
    });
  }
  for (auto& t : threads) t.join();
  auto jobs_ended = Clock::now();
  std::string failure;
  for (const auto& r : results) {
    if (!r.ok() && r.error().condition == Condition::cancelled) return r.error();
  }
  for (const auto& r : results) {
    if (!r.ok() && failure.empty()) failure = r.error().message;
  }
  note_restarted(d, todo, jobs_ended);
  if (!failure.empty()) {
    // The jobs are over (a failed one after its rollback), but the mirror of their hosts may
    // still hold a poll from before: the drill's end and its report must show the guests as the
    // agents left them, not as they were a poll ago.
    await_fresh_polls(todo, jobs_ended);
  }
  if (failure.empty()) {
    auto ready = wait_ready(d, b.hosts, "after batch " + std::to_string(b.index + 1), false);
    if (!ready.ok()) failure = ready.error().message;
    if (!ready.ok() && ready.error().condition == Condition::cancelled) return ready.error();
  }
  {
    std::lock_guard lock(mu);
    b.status = failure.empty() ? "done" : "failed";
    b.finished_ms = unix_ms();
    bj = batch_json_locked(d, b);
  }
  save_drill(d);
  publish({{"drill.batch", bj}});
  if (!failure.empty())
    return make_error(Condition::internal, "batch " + std::to_string(b.index + 1) + ": " + failure);
  return {};
}

}  // namespace fabriclab::orchestrator
