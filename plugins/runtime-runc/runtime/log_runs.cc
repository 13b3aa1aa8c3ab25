#include "log_runs.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <system_error>
#include <utility>
#include <vector>

#include "../image/fs_ops.h"

namespace flotilla::runc {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char *kStreams[] = {"stdout", "stderr"};
// Runs whose files are all gone stay listed (with "dropped") up to this
// many entries in all, so that a crash loop cannot grow runs.json forever.
constexpr size_t kMaxEntries = 300;

// runs.json is read, changed and written under this (a create and an exit
// of the same id may be on two worker threads).
std::mutex &runs_mutex() {
  static std::mutex m;
  return m;
}

void copy_end(json &entry, const json &state) {
  if (!state.is_object()) return;
  for (const char *k : {"started_at", "finished_at", "exit_code", "signal"})
    if (state.contains(k) && !state[k].is_null() &&
        !(state[k].is_string() && state[k].get<std::string>().empty()))
      entry[k] = state[k];
}

std::string run_dir(int64_t n) {
  return "run-" + std::to_string(n);
}

bool all_digits(const std::string &s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

json read_runs(const fs::path &logs) {
  std::ifstream in(logs / "runs.json");
  if (!in) return json::array();
  json doc = json::parse(in, nullptr, false);
  if (!doc.is_object() || !doc.contains("runs") || !doc["runs"].is_array()) return json::array();
  return doc["runs"];
}

// The files of one stream in dir, oldest first: stream.log.K ... .1, stream.log.
std::vector<fs::path> stream_files(const fs::path &dir, const std::string &stream) {
  std::vector<std::pair<int, fs::path>> found;
  const std::string base = stream + ".log";
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name == base) {
      found.emplace_back(0, e.path());
    } else if (name.rfind(base + ".", 0) == 0) {
      std::string k = name.substr(base.size() + 1);
      if (all_digits(k) && k.size() < 4) found.emplace_back(std::stoi(k), e.path());
    }
  }
  std::sort(found.begin(), found.end(),
            [](const auto &a, const auto &b) { return a.first > b.first; });
  std::vector<fs::path> out;
  for (auto &f : found) out.push_back(std::move(f.second));
  return out;
}

bool run_has_files(const fs::path &logs, int64_t n) {
  for (const char *s : kStreams)
    if (!stream_files(logs / run_dir(n), s).empty()) return true;
  return false;
}

}  // namespace

LogRun start_log_run(const fs::path &logs, const json &ended, unsigned max_files,
                     const std::string &now) {
  if (max_files == 0) max_files = 1;
  std::lock_guard<std::mutex> g(runs_mutex());
  fs::create_directories(logs);
  json runs = read_runs(logs);
  std::error_code ec;

  // Logs an older plugin wrote (plain files in logs/): they are run 1.
  bool legacy = false;
  for (const char *s : kStreams) {
    auto st = fs::symlink_status(logs / (std::string(s) + ".log"), ec);
    if (fs::exists(st) && !fs::is_symlink(st)) legacy = true;
  }
  if (legacy) {
    runs = json::array({json{{"run", 1}}});
    fs::create_directories(logs / run_dir(1));
    for (const auto &e : fs::directory_iterator(logs)) {
      const std::string name = e.path().filename().string();
      if ((name.rfind("stdout.log", 0) == 0 || name.rfind("stderr.log", 0) == 0) &&
          !fs::is_symlink(e.symlink_status()))
        fs::rename(e.path(), logs / run_dir(1) / name);
    }
  }

  int64_t next = 1;
  if (!runs.empty()) {
    json &last = runs.back();
    const int64_t n = last.value("run", static_cast<int64_t>(runs.size()));
    if (run_has_files(logs, n)) {
      copy_end(last, ended);
      next = n + 1;
    } else {
      // Its container was never started (its create failed): reuse it.
      next = n;
      runs.erase(runs.end() - 1);
    }
  }

  // The earlier runs keep at most max_files files per stream together.
  for (const char *s : kStreams) {
    std::vector<std::pair<size_t, fs::path>> files;  // (entry, file), oldest first
    for (size_t i = 0; i < runs.size(); ++i)
      for (auto &f : stream_files(logs / run_dir(runs[i].value("run", int64_t{0})), s))
        files.emplace_back(i, std::move(f));
    const size_t drop = files.size() > max_files ? files.size() - max_files : 0;
    for (size_t j = 0; j < drop; ++j) {
      fs::remove(files[j].second, ec);
      runs[files[j].first]["truncated"] = true;
    }
  }
  for (json &r : runs) {
    const int64_t n = r.value("run", int64_t{0});
    if (!r.value("truncated", false) || run_has_files(logs, n)) continue;
    r.erase("truncated");
    r["dropped"] = true;
    fs::remove_all(logs / run_dir(n), ec);
  }
  while (runs.size() >= kMaxEntries && runs[0].value("dropped", false)) runs.erase(runs.begin());

  const fs::path dir = logs / run_dir(next);
  fs::create_directories(dir);
  runs.push_back({{"run", next}, {"created_at", now}});
  write_file_atomic(logs / "runs.json", json{{"runs", runs}}.dump(2) + "\n", false);
  for (const char *s : kStreams) {
    const std::string name = std::string(s) + ".log";
    const fs::path tmp = logs / ("." + name + ".new");
    fs::remove(tmp, ec);
    fs::create_symlink(fs::path(run_dir(next)) / name, tmp);
    fs::rename(tmp, logs / name);
  }
  return {next, dir / "stdout.log", dir / "stderr.log"};
}

void record_run_end(const fs::path &logs, int64_t run, const json &state) {
  std::lock_guard<std::mutex> g(runs_mutex());
  std::error_code ec;
  if (!fs::exists(logs / "runs.json", ec)) return;
  json runs = read_runs(logs);
  if (runs.empty()) return;
  json *entry = nullptr;
  if (run == 0)
    entry = &runs.back();
  else
    for (json &r : runs)
      if (r.value("run", int64_t{0}) == run) entry = &r;
  if (!entry) return;
  copy_end(*entry, state);
  write_file_atomic(logs / "runs.json", json{{"runs", runs}}.dump(2) + "\n", false);
}

std::string log_stream_path(const fs::path &logs, const std::string &stream) {
  if (stream == "stdout" || stream == "stderr") return (logs / (stream + ".log")).string();
  if (stream == "runs") return (logs / "runs.json").string();
  const size_t at = stream.find('@');
  if (at == std::string::npos) return "";
  const std::string s = stream.substr(0, at), n = stream.substr(at + 1);
  if ((s != "stdout" && s != "stderr") || !all_digits(n) || n.size() > 9 || n[0] == '0') return "";
  return (logs / ("run-" + n) / (s + ".log")).string();
}

}  // namespace flotilla::runc
