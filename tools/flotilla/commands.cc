// The command table. A new group (e.g. `image import|ls|rm`) is a file
// like job.cc with its own *_commands() and one line here.
#include "cli.h"

namespace flotilla::cli {

const std::vector<Command> &all_commands() {
  static const std::vector<Command> all = [] {
    std::vector<Command> out;
    for (const auto *group :
         {&job_commands(), &alloc_commands(), &image_commands(), &node_commands(),
          &service_commands(), &plugin_commands(), &version_commands()})
      out.insert(out.end(), group->begin(), group->end());
    return out;
  }();
  return all;
}

}  // namespace flotilla::cli
