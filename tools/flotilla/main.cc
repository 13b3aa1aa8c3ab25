// flotilla — the command line client of flotillad's API.
//
//   flotilla [--socket PATH] [--json] <command> [arguments]
//
// Exit codes: 0 ok, 1 the daemon refused or failed the request, 2 bad
// usage, 3 the daemon cannot be reached, 4 a local file could not be read.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli.h"

namespace flotilla::cli {
namespace {

constexpr const char *kDefaultSocket = "/run/flotilla/flotilla.sock";

std::string command_words(const Command &c) {
  return c.group.empty() ? std::string(c.name) : std::string(c.group) + " " + std::string(c.name);
}

std::string command_usage(const Command &c) {
  std::string u = "flotilla " + command_words(c);
  if (!c.args.empty()) u += " " + std::string(c.args);
  return u;
}

void print_usage(std::FILE *out) {
  std::fprintf(out,
               "usage: flotilla [--socket PATH] [--json] <command> [arguments]\n"
               "\n"
               "Commands:\n");
  std::vector<std::pair<std::string, std::string>> rows;
  size_t width = 0;
  for (const Command &c : all_commands()) {
    std::string left = command_words(c);
    if (!c.args.empty()) left += " " + std::string(c.args);
    width = std::max(width, left.size());
    rows.emplace_back(left, std::string(c.summary));
  }
  rows.emplace_back("help [COMMAND]", "this help, or one command's");
  for (const auto &[left, summary] : rows)
    std::fprintf(out, "  %-*s  %s\n", static_cast<int>(width), left.c_str(), summary.c_str());
  std::fprintf(out,
               "\n"
               "Options:\n"
               "  --socket PATH  the daemon's API socket (default: $FLOTILLA_SOCKET, else %s)\n"
               "  --json         print the API's JSON instead of tables\n"
               "  -h, --help     help; `flotilla <command> --help` for one command\n"
               "\n"
               "Exit codes: 0 ok, 1 the daemon refused or failed the request, 2 bad usage,\n"
               "3 the daemon cannot be reached, 4 a local file could not be read.\n",
               kDefaultSocket);
}

void print_command_help(const Command &c) {
  std::printf("usage: %s\n\n%s\n", command_usage(c).c_str(), std::string(c.summary).c_str());
  if (!c.details.empty()) std::printf("\n%s\n", std::string(c.details).c_str());
}

// The command named by the first words of `words` (removing them), or
// nullptr. `group_only` is set when words[0] is a group but the rest is not
// one of its commands.
const Command *find_command(std::vector<std::string> &words, bool &group_only) {
  group_only = false;
  if (words.empty()) return nullptr;
  for (const Command &c : all_commands()) {
    if (c.group.empty() && c.name == words[0]) {
      words.erase(words.begin());
      return &c;
    }
  }
  for (const Command &c : all_commands()) {
    if (c.group != words[0]) continue;
    group_only = true;
    if (words.size() > 1 && c.name == words[1]) {
      words.erase(words.begin(), words.begin() + 2);
      group_only = false;
      return &c;
    }
  }
  return nullptr;
}

int usage_error(const std::string &message, const Command *c) {
  std::fprintf(stderr, "flotilla: %s\n", message.c_str());
  if (c) {
    std::fprintf(stderr, "usage: %s\n", command_usage(*c).c_str());
  } else {
    print_usage(stderr);
  }
  return kExitUsage;
}

int group_usage(const std::string &group, const std::string &given) {
  std::fprintf(stderr, "flotilla: %s\n",
               given.empty() ? ("\"" + group + "\" needs a command").c_str()
                             : ("\"" + group + " " + given + "\" is not a command").c_str());
  std::fprintf(stderr, "usage:\n");
  for (const Command &c : all_commands())
    if (c.group == group) std::fprintf(stderr, "  %s\n", command_usage(c).c_str());
  return kExitUsage;
}

int run(int argc, char **argv) {
  Cli cli;
  std::string socket;
  if (const char *env = std::getenv("FLOTILLA_SOCKET"); env && *env) socket = env;
  if (socket.empty()) socket = kDefaultSocket;
  bool help = false;
  std::vector<std::string> words;
  bool options_end = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (options_end) {
      words.push_back(a);
    } else if (a == "--") {
      options_end = true;
      words.push_back(a);
    } else if (a == "--json") {
      cli.json = true;
    } else if (a == "-h" || a == "--help") {
      help = true;
    } else if (a == "--socket") {
      if (i + 1 >= argc) return usage_error("--socket needs a PATH", nullptr);
      socket = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socket = a.substr(9);
    } else {
      words.push_back(a);
    }
  }
  if (socket.empty()) return usage_error("--socket needs a PATH", nullptr);
  cli.client = HttpClient(socket);

  if (words.empty()) {
    if (help) {
      print_usage(stdout);
      return kExitOk;
    }
    return usage_error("no command given", nullptr);
  }
  if (words[0] == "help") {
    words.erase(words.begin());
    if (words.empty()) {
      print_usage(stdout);
      return kExitOk;
    }
    bool group_only = false;
    std::string group = words[0], given = words.size() > 1 ? words[1] : "";
    const Command *c = find_command(words, group_only);
    if (c) {
      print_command_help(*c);
      return kExitOk;
    }
    if (group_only && given.empty()) {
      for (const Command &cmd : all_commands())
        if (cmd.group == group)
          std::printf("%-40s %s\n", command_usage(cmd).c_str(), std::string(cmd.summary).c_str());
      return kExitOk;
    }
    return usage_error("\"" + group + "\" is not a command", nullptr);
  }

  bool group_only = false;
  std::string first = words[0], second = words.size() > 1 ? words[1] : "";
  const Command *c = find_command(words, group_only);
  if (!c) {
    if (group_only) {
      if (help && second.empty()) {
        for (const Command &cmd : all_commands())
          if (cmd.group == first)
            std::printf("%-40s %s\n", command_usage(cmd).c_str(), std::string(cmd.summary).c_str());
        return kExitOk;
      }
      return group_usage(first, second);
    }
    return usage_error("\"" + first + "\" is not a command", nullptr);
  }
  if (help) {
    print_command_help(*c);
    return kExitOk;
  }

  Args args(std::move(words));
  try {
    return c->run(cli, args);
  } catch (const UsageError &e) {
    return usage_error(e.what(), c);
  } catch (const CannotConnect &e) {
    std::fprintf(stderr,
                 "Error: cannot reach flotillad at %s: %s\n"
                 "  is flotillad running? (choose the socket with --socket or FLOTILLA_SOCKET)\n",
                 socket.c_str(), e.what());
    return kExitUnreachable;
  } catch (const ProtocolError &e) {
    std::fprintf(stderr, "Error: flotillad at %s: %s\n", socket.c_str(), e.what());
    return kExitApiError;
  } catch (const LocalError &e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return kExitLocal;
  }
}

}  // namespace
}  // namespace flotilla::cli

int main(int argc, char **argv) {
  try {
    return flotilla::cli::run(argc, argv);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "Error: %s\n", e.what());
    return flotilla::cli::kExitApiError;
  }
}
