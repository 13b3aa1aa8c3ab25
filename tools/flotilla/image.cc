// flotilla image import|ls|rm — the image store the runtime plugin keeps.
#include <climits>
#include <cstdlib>

#include "cli.h"

namespace flotilla::cli {
namespace {

using nlohmann::json;

std::string human_size(const json &bytes) {
  if (!bytes.is_number()) return "-";
  double b = bytes.get<double>();
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

std::string short_digest(const json &d) {
  std::string s = d.is_string() ? d.get<std::string>() : "-";
  auto colon = s.find(':');
  return colon == std::string::npos ? s : s.substr(colon + 1, 12);
}

int image_import(Cli &cli, Args &args) {
  std::string tag = args.option({"--tag", "-t"}, "an image name like busybox:latest");
  std::string path = args.positional("PATH");
  args.done();
  // The daemon reads the path on its own host: send it absolute.
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) throw LocalError(path + ": no such file or directory");
  json body = {{"path", real}};
  if (!tag.empty()) body["tag"] = tag;
  HttpResponse r = cli.client.request("POST", "/v1/images", body.dump(), "application/json");
  if (r.status / 100 != 2) return api_error(cli, r);
  if (cli.json) {
    print_json(r);
    return kExitOk;
  }
  json rec = body_json(r);
  json imp = rec.value("import", json::object());
  std::string id = cell(rec, "name") + " (" + short_digest(rec.value("digest", json())) + ", " +
                   human_size(rec.value("size", json())) + " compressed, " +
                   human_size(rec.value("unpacked_size", json())) + " unpacked)";
  json reused = imp.value("blobs_reused", json::array());
  if (!imp.value("source_checked", true)) {
    // Say exactly what happened: nothing of PATH but its index.json was read.
    std::printf("Already in the store: %s\n", id.c_str());
    std::printf(
        "  The store's copy (verified when it was first imported) was reused; the %zu "
        "blob(s) it names were not read from %s, so they were not checked.\n",
        reused.size(), real);
  } else {
    std::printf("Imported %s\n", id.c_str());
    std::printf("  %d blob(s) read from %s and verified", imp.value("blobs_read", 0), real);
    if (!reused.empty()) std::printf("; %zu already in the store, not read again", reused.size());
    std::printf("\n");
  }
  json skipped = rec.value("device_nodes_skipped", json::array());
  if (skipped.is_array() && !skipped.empty()) {
    std::printf("  %zu device node(s) left out (containers get /dev from the runtime):\n",
                skipped.size());
    size_t shown = 0;
    for (const json &d : skipped) {
      if (++shown > 10) {
        std::printf("    ... and %zu more (flotilla --json image ls)\n", skipped.size() - 10);
        break;
      }
      std::printf("    %s\n", cell(d).c_str());
    }
  }
  return kExitOk;
}

int image_ls(Cli &cli, Args &args) {
  args.done();
  int code = kExitOk;
  auto j = get_json(cli, "/v1/images", code);
  if (!j) return code;
  Table t({"NAME", "DIGEST", "COMPRESSED", "UNPACKED", "LAYERS", "CREATED"});
  for (const json &img : (*j)["images"]) {
    std::string names;
    if (img.contains("names") && img["names"].is_array())
      for (const json &n : img["names"]) names += (names.empty() ? "" : ",") + cell(n);
    if (names.empty()) names = cell(img, "name");
    json layers = img.value("layers", json());
    json unpacked = img.value("unpacked_size", json());
    t.add({names, short_digest(img.value("digest", json())), human_size(img.value("size", json())),
           // 0: imported before the store recorded it
           unpacked.is_number() && unpacked.get<double>() > 0 ? human_size(unpacked) : "-",
           layers.is_array() ? std::to_string(layers.size()) : cell(layers), cell(img, "created")});
  }
  if (t.empty())
    std::printf("No images. Import one with: flotilla image import PATH --tag NAME\n");
  else
    t.print();
  return kExitOk;
}

int image_rm(Cli &cli, Args &args) {
  std::string ref = args.positional("IMAGE");
  args.done();
  HttpResponse r = cli.client.request("DELETE", "/v1/images/" + url_escape(ref), "", "");
  if (r.status / 100 != 2) return api_error(cli, r);
  if (cli.json)
    print_json(r);
  else
    std::printf("Removed %s\n", ref.c_str());
  return kExitOk;
}

}  // namespace

const std::vector<Command> &image_commands() {
  static const std::vector<Command> commands = {
      {"image", "import", "PATH [--tag NAME]",
       "import an OCI image layout directory or oci-archive tarball",
       "PATH is read by the daemon, on its own host. Every blob read is checked against its "
       "sha256 digest and every layer unpacked once; a hostile layer is refused, and device "
       "nodes are left out. Blobs the store already has are not read again (the output says "
       "so). When PATH holds several images, --tag NAME picks the one whose "
       "org.opencontainers.image.ref.name is NAME or NAME's tag, and names it NAME.",
       image_import},
      {"image", "ls", "", "list the images the runtime can run", "", image_ls},
      {"image", "rm", "IMAGE", "remove an image no container uses", "", image_rm},
  };
  return commands;
}

}  // namespace flotilla::cli
