// A libuv loop on its own thread, for tests that drive loop-thread code
// (the API, the HTTP server) from the test thread.
#pragma once

#include <gtest/gtest.h>
#include <uv.h>

#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace flotilla::test {

class LoopThread {
 public:
  LoopThread() {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &async_,
                  [](uv_async_t *a) { static_cast<LoopThread *>(a->data)->drain(); });
    async_.data = this;
    thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }
  ~LoopThread() {
    if (thread_.joinable()) stop();
  }
  uv_loop_t *loop() { return &loop_; }

  // Run fn on the loop thread and wait; rethrows what fn threw.
  void run(const std::function<void()> &fn) {
    std::promise<void> done;
    auto f = done.get_future();
    post([&] {
      try {
        fn();
        done.set_value();
      } catch (...) {
        done.set_exception(std::current_exception());
      }
    });
    f.get();
  }

  // Fails the test for every handle still open (a leak), then ends the loop.
  void stop() {
    int open = 0;
    run([&] {
      uv_walk(
          &loop_,
          [](uv_handle_t *h, void *arg) {
            if (!uv_is_closing(h)) ++*static_cast<int *>(arg);
          },
          &open);
      uv_close(reinterpret_cast<uv_handle_t *>(&async_), nullptr);
    });
    EXPECT_EQ(open, 1) << "handles left open on the loop (the async handle is the 1 expected)";
    if (open != 1) uv_stop(&loop_);
    thread_.join();
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

 private:
  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(fn));
    }
    uv_async_send(&async_);
  }
  void drain() {
    std::deque<std::function<void()>> q;
    {
      std::lock_guard lock(mutex_);
      q.swap(queue_);
    }
    for (auto &f : q) f();
  }

  uv_loop_t loop_{};
  uv_async_t async_{};
  std::thread thread_;
  std::mutex mutex_;
  std::deque<std::function<void()>> queue_;
};

}  // namespace flotilla::test
