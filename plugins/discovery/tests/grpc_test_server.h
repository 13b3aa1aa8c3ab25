// A real gRPC server for the grpc check tests: grpc++'s own implementation
// of grpc.health.v1 (grpc::EnableDefaultHealthCheckService) on loopback.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <memory>
#include <string>

namespace flotilla::discovery::test {

// A real gRPC server with the standard health service. grpc++ serves it
// only beside a callback service: the generic one, which answers every
// other method UNIMPLEMENTED.
class GrpcServer {
 public:
  // With a certificate and key (PEM text), the server speaks TLS only.
  explicit GrpcServer(const std::string &cert_pem = "", const std::string &key_pem = "") {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    b.RegisterCallbackGenericService(&generic_);
    std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
    if (!cert_pem.empty()) {
      grpc::SslServerCredentialsOptions o;
      o.pem_key_cert_pairs.push_back({key_pem, cert_pem});
      creds = grpc::SslServerCredentials(o);
    }
    b.AddListeningPort("127.0.0.1:0", creds, &port_);
    server_ = b.BuildAndStart();
  }
  ~GrpcServer() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  void set(const std::string &service, bool serving) {
    server_->GetHealthCheckService()->SetServingStatus(service, serving);
  }
  int port() const { return port_; }
  bool up() const { return server_ && port_ > 0; }

 private:
  int port_ = 0;
  grpc::CallbackGenericService generic_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace flotilla::discovery::test
