// flotilla image pull|import|ls|rm — the image store the runtime plugin keeps.
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <map>

#include <set>

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

// What `image pull` shows while the daemon streams progress: one bar per
// blob on a terminal, redrawn in place; one line per finished blob and
// phase otherwise (CI logs).
class PullView {
 public:
  explicit PullView(bool tty) : tty_(tty) {}

  void progress(const json &p) {
    std::string phase = p.value("phase", "");
    const json &blobs = p.contains("blobs") && p["blobs"].is_array() ? p["blobs"] : json::array();
    if (!tty_) {
      if (phase != phase_) std::printf("%s %s\n", phase.c_str(), p.value("ref", "").c_str());
      for (const json &b : blobs) {
        std::string d = b.value("digest", "");
        bool complete = b.value("present", false) ||
                        b.value("done", json(0)) == b.value("size", json(-1));
        if (complete && reported_.insert(d).second)
          std::printf("  %-10s %s %s%s\n", b.value("role", "").c_str(), short_digest(d).c_str(),
                      human_size(b.value("size", json())).c_str(),
                      b.value("present", false) ? " already present" : " done");
      }
      std::fflush(stdout);
      phase_ = phase;
      return;
    }
    if (lines_ > 0) std::printf("\033[%dA", lines_);  // back to the first bar
    lines_ = 0;
    for (const json &b : blobs) {
      double size = b.value("size", json(0)).get<double>();
      double done = b.value("done", json(0)).get<double>();
      int width = 30;
      int fill = size > 0 ? static_cast<int>(width * done / size) : width;
      std::string bar(static_cast<size_t>(fill), '=');
      bar.resize(static_cast<size_t>(width), ' ');
      std::printf("\033[2K%-10s %s [%s] %s / %s%s\n", b.value("role", "").c_str(),
                  short_digest(b.value("digest", json())).c_str(), bar.c_str(),
                  human_size(b.value("done", json())).c_str(),
                  human_size(b.value("size", json())).c_str(),
                  b.value("present", false) ? " (present)" : "");
      ++lines_;
    }
    std::printf("\033[2K%s\n", phase.c_str());
    ++lines_;
    std::fflush(stdout);
  }

 private:
  bool tty_;
  int lines_ = 0;
  std::string phase_;
  std::set<std::string> reported_;
};

int image_pull(Cli &cli, Args &args) {
  std::string policy = args.option({"--policy"}, "always or if_not_present");
  std::string ref = args.positional("REF");
  args.done();
  if (!policy.empty() && policy != "always" && policy != "if_not_present")
    throw UsageError("--policy must be always or if_not_present, got " + policy);
  json body = {{"ref", ref}};
  if (!policy.empty()) body["policy"] = policy;
  // The daemon streams one JSON object per line: {"progress": ...} while it
  // pulls, then {"image": record} or {"error": message, "status": code}.
  PullView view(::isatty(STDOUT_FILENO) == 1);
  std::string pending;
  json result, error;
  int http_status = 0;
  auto on_line = [&](const std::string &line) {
    if (line.empty()) return;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) return;
    if (cli.json) {
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
    if (j.contains("progress") && !cli.json) view.progress(j["progress"]);
    if (j.contains("image")) result = j["image"];
    if (j.contains("error")) error = j;
  };
  HttpResponse r = cli.client.request(
      "POST", "/v1/images/pull?progress=true", body.dump(), "application/json",
      [&](std::string_view chunk) {
        if (http_status / 100 != 2) {
          pending.append(chunk);  // an error body, read whole below
          return;
        }
        pending.append(chunk);
        size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
          on_line(pending.substr(0, nl));
          pending.erase(0, nl + 1);
        }
      },
      [&](const HttpResponse &h) { http_status = h.status; });
  if (r.status / 100 != 2) {
    r.body = pending;
    return api_error(cli, r);
  }
  on_line(pending);
  if (!error.is_null()) {
    if (!cli.json)
      std::fprintf(stderr, "Error: %s\n", error.value("error", "the pull failed").c_str());
    return kExitApiError;
  }
  if (result.is_null()) {
    if (!cli.json) std::fprintf(stderr, "Error: the daemon ended the pull without a result\n");
    return kExitApiError;
  }
  if (!cli.json) {
    bool pulled = result.value("pulled", true);
    std::printf("%s %s (%s, %s)\n", pulled ? "Pulled" : "Present:", cell(result, "name").c_str(),
                short_digest(result.value("digest", json())).c_str(),
                human_size(result.value("size", json())).c_str());
  }
  return kExitOk;
}

// Where an image came from: "registry/repository" or "import".
std::string origin_cell(const json &img) {
  const json &o = img.contains("origin") ? img["origin"] : json();
  if (!o.is_object()) return "-";
  if (o.value("type", "") == "registry")
    return o.value("registry", "") + "/" + o.value("repository", "");
  return o.value("type", "-");
}

int image_ls(Cli &cli, Args &args) {
  args.done();
  int code = kExitOk;
  auto j = get_json(cli, "/v1/images", code);
  if (!j) return code;
  Table t({"NAME", "DIGEST", "COMPRESSED", "UNPACKED", "LAYERS", "CREATED", "ORIGIN"});
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
           layers.is_array() ? std::to_string(layers.size()) : cell(layers), cell(img, "created"),
           origin_cell(img)});
  }
  if (t.empty())
    std::printf(
        "No images. Pull one with: flotilla image pull REF, or import one with: flotilla image "
        "import PATH --tag NAME\n");
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
      {"image", "pull", "REF [--policy always|if_not_present]",
       "pull an image from an OCI registry, showing each layer's progress",
       "REF as Docker writes it: busybox (docker.io/library/busybox:latest), "
       "registry.example:5000/team/app:2, or host/app@sha256:... . The daemon pulls it with the "
       "credentials, CAs and mirrors of its [plugin.runtime-runc.registry] config; layers it "
       "has are not downloaded again. A terminal gets one progress bar per layer, anything "
       "else one line per layer; --json prints the daemon's progress objects, one per line. "
       "Exit 0 when the image is in the store, 1 with the registry's message otherwise.",
       image_pull},
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
