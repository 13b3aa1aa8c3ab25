// Tables, fields, JSON and API errors as the CLI prints them.
#include <algorithm>
#include <cstdio>

#include "cli.h"

namespace flotilla::cli {

using nlohmann::json;

bool Args::flag(std::initializer_list<std::string_view> names) {
  bool found = false;
  for (auto it = args_.begin(); it != args_.end();) {
    if (std::find(names.begin(), names.end(), *it) != names.end()) {
      it = args_.erase(it);
      found = true;
    } else {
      ++it;
    }
  }
  return found;
}

std::string Args::option(std::initializer_list<std::string_view> names, std::string_view what) {
  std::string value;
  for (auto it = args_.begin(); it != args_.end();) {
    bool matched = false;
    for (std::string_view n : names) {
      if (*it == n) {
        if (std::next(it) == args_.end())
          throw UsageError(std::string(n) + " needs " + std::string(what));
        value = *std::next(it);
        it = args_.erase(it, std::next(it, 2));
        matched = true;
        break;
      }
      if (it->size() > n.size() && it->compare(0, n.size(), n) == 0 && (*it)[n.size()] == '=') {
        value = it->substr(n.size() + 1);
        it = args_.erase(it);
        matched = true;
        break;
      }
    }
    if (!matched) ++it;
  }
  return value;
}

std::optional<std::string> Args::optional_positional() {
  for (auto it = args_.begin(); it != args_.end(); ++it) {
    if (*it == "--") {
      if (std::next(it) == args_.end()) return std::nullopt;
      std::string v = *std::next(it);
      args_.erase(std::next(it));
      return v;
    }
    if (it->size() > 1 && (*it)[0] == '-') continue;  // an option, left for done()
    std::string v = *it;
    args_.erase(it);
    return v;
  }
  return std::nullopt;
}

std::string Args::positional(std::string_view what) {
  auto v = optional_positional();
  if (!v) throw UsageError("missing " + std::string(what));
  return *v;
}

void Args::done() const {
  for (const std::string &a : args_) {
    if (a == "--") continue;
    if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option " + a);
    throw UsageError("unexpected argument \"" + a + "\"");
  }
}

void Table::print() const {
  std::vector<size_t> width;
  for (const auto &row : rows_)
    for (size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], row[i].size());
    }
  for (const auto &row : rows_) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

void print_fields(const std::vector<std::pair<std::string, std::string>> &fields) {
  size_t w = 0;
  for (const auto &[k, v] : fields) w = std::max(w, k.size());
  for (const auto &[k, v] : fields)
    std::printf("%s%s  %s\n", k.c_str(), std::string(w - k.size(), ' ').c_str(), v.c_str());
}

json body_json(const HttpResponse &r) {
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded())
    throw ProtocolError("the daemon answered " + std::to_string(r.status) +
                     " with a body that is not JSON");
  return j;
}

void print_json(const HttpResponse &r) {
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded()) {
    std::fwrite(r.body.data(), 1, r.body.size(), stdout);
    return;
  }
  std::printf("%s\n", j.dump(2, ' ', false, json::error_handler_t::replace).c_str());
}

int api_error(const Cli &cli, const HttpResponse &r, std::string_view source) {
  if (cli.json) {
    print_json(r);
    return kExitApiError;
  }
  json j = json::parse(r.body, nullptr, false);
  std::string message;
  if (j.is_object() && j.contains("error") && j["error"].is_object())
    message = j["error"].value("message", "");
  if (message.empty()) message = "the daemon answered HTTP " + std::to_string(r.status);
  std::fprintf(stderr, "Error: %s\n", message.c_str());
  if (j.is_object() && j.contains("error") && j["error"].contains("problems") &&
      j["error"]["problems"].is_array()) {
    for (const json &p : j["error"]["problems"]) {
      // As the daemon's own messages put it (JobSpecProblem::to_string):
      // "web.toml line 12, task[0].resources.memory: must be ..."
      std::string line = "  " + std::string(source);
      int n = p.value("line", 0);
      if (n > 0) line += (source.empty() ? "line " : " line ") + std::to_string(n);
      std::string key = p.value("key", "");
      if (!key.empty()) line += (line.size() > 2 ? ", " : "") + key;
      line += (line.size() > 2 ? ": " : "") + p.value("message", "");
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }
  return kExitApiError;
}

std::string cell(const json &value) {
  if (value.is_null()) return "-";
  if (value.is_string()) {
    std::string s = value.get<std::string>();
    return s.empty() ? "-" : s;
  }
  return value.dump();
}

std::string cell(const json &j, std::string_view key) {
  if (!j.is_object()) return "-";
  auto it = j.find(key);
  return it == j.end() ? "-" : cell(*it);
}

std::string joined(const json &list) {
  if (!list.is_array() || list.empty()) return "-";
  std::string out;
  for (const json &s : list) out += (out.empty() ? "" : ",") + cell(s);
  return out;
}

std::optional<json> get_json(Cli &cli, const std::string &target, int &exit_code) {
  HttpResponse r = cli.client.request("GET", target);
  if (r.status >= 400) {
    exit_code = api_error(cli, r);
    return std::nullopt;
  }
  if (cli.json) {
    print_json(r);
    exit_code = kExitOk;
    return std::nullopt;
  }
  return body_json(r);
}

}  // namespace flotilla::cli
