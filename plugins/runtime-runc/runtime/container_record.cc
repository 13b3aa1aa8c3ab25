#include "container_record.h"

namespace flotilla::runc {

using json = nlohmann::json;

json ContainerRecord::to_json() const {
  return {{"version", 1},
          {"id", id},
          {"alloc_id", alloc_id},
          {"job", job},
          {"task", task},
          {"image", image},
          {"image_digest", image_digest},
          {"cgroups_path", cgroups_path},
          {"kill_signal", kill_signal},
          {"kill_timeout_ms", kill_timeout_ms},
          {"created_at", created_at},
          {"started_at", started_at}};
}

ContainerRecord ContainerRecord::from_json(const json &j) {
  ContainerRecord r;
  r.id = j.value("id", "");
  r.alloc_id = j.value("alloc_id", "");
  r.job = j.value("job", "");
  r.task = j.value("task", "");
  r.image = j.value("image", "");
  r.image_digest = j.value("image_digest", "");
  r.cgroups_path = j.value("cgroups_path", "");
  r.kill_signal = j.value("kill_signal", r.kill_signal);
  r.kill_timeout_ms = j.value("kill_timeout_ms", r.kill_timeout_ms);
  r.created_at = j.value("created_at", "");
  r.started_at = j.value("started_at", "");
  return r;
}

ShimState ShimState::from_json(const json &j) {
  ShimState s;
  s.status = j.value("status", "");
  s.shim_pid = j.value("shim_pid", 0);
  s.shim_start_ticks = j.value("shim_start_ticks", uint64_t{0});
  s.pid = j.value("pid", 0);
  s.exit_code = j.value("exit_code", -1);
  s.signal = j.value("signal", 0);
  s.finished_at = j.value("finished_at", "");
  s.error = j.value("error", "");
  return s;
}

json state_json(const ContainerRecord &rec, const ContainerStatus &st) {
  json j = {{"id", rec.id},
            {"status", st.status},
            {"pid", st.pid},
            {"exit_code", st.exit_code},
            {"signal", st.signal},
            {"created_at", rec.created_at},
            {"started_at", rec.started_at},
            {"finished_at", st.finished_at},
            {"alloc_id", rec.alloc_id},
            {"job", rec.job},
            {"task", rec.task},
            {"image", rec.image}};
  if (!st.error.empty()) j["error"] = st.error;
  return j;
}

}  // namespace flotilla::runc
