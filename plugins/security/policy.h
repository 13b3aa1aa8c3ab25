// The host policy ([plugin.security]): the floor every job must meet on
// this host, checked when a job is submitted (admit) and again before each
// container is created (resolve), since the job may have been stored
// before the policy changed or on another node.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "profile.h"

namespace flotilla::security {

struct HostPolicy {
  std::string default_profile = "default";
  std::string min_profile = "default";       // "default" or "restricted"
  std::vector<std::string> allowed_cap_add;  // canonical; "ALL" = any
  bool allow_root = true;
  bool allow_unconfined = false;
  bool allow_privilege_escalation = false;
};

// A refusal: permission (the policy or the profile forbids it) or invalid
// (the task names something that does not exist).
struct Refusal {
  enum Kind { none, permission, invalid } kind = none;
  std::string message;
  explicit operator bool() const { return kind != none; }
};

// Config problems: (key inside [plugin.security], message).
using ConfigProblems = std::vector<std::pair<std::string, std::string>>;

// Read [plugin.security] (as JSON). Every bad value is appended to
// problems; returns false if there was one.
bool parse_policy(const nlohmann::json &cfg, HostPolicy &out, ConfigProblems &problems);
// The same, giving only the first problem.
bool parse_policy(const nlohmann::json &cfg, HostPolicy &out, std::string &key,
                  std::string &message);

// Profiles the operator configured that could not be loaded: name -> the
// precise reason. A task that would use one is refused with that reason.
using BrokenProfiles = std::map<std::string, std::string>;

// Check one task against its profile and the host policy. label names the
// task in messages: "task[0] (server)".
Refusal check_task(const HostPolicy &policy, const std::map<std::string, Profile> &profiles,
                   const TaskSecurity &t, const std::string &label,
                   const BrokenProfiles &broken = {});

// The profile a task gets: its own, else the host's default.
const Profile *profile_for(const HostPolicy &policy, const std::map<std::string, Profile> &profiles,
                           const TaskSecurity &t);

}  // namespace flotilla::security
