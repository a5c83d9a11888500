// Calls a method of a loopback server with arbitrary request bytes through
// grpc::GenericStub, for tests of what a server does with bytes that are not the message
// it expects (malformed protobuf, oversized requests). Test-only; knows no service.
#pragma once

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

namespace lightrl {

// Sends `bytes` as the one request message of `method` ("/lightrl.v1.RewardService/Score")
// and returns the call's status; the first reply message, if any, goes to `reply`. Works
// for streaming methods too: the client sends one message and closes its side.
inline grpc::Status RawCall(const std::string& address, const std::string& method,
                            const std::string& bytes, std::string* reply = nullptr,
                            int max_send_bytes = -1) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(max_send_bytes);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  grpc::Status status = done.get_future().get();
  if (reply != nullptr) {
    reply->clear();
    grpc::Slice joined;
    if (status.ok() && response.TrySingleSlice(&joined).ok()) {
      reply->assign(reinterpret_cast<const char*>(joined.begin()), joined.size());
    } else if (status.ok()) {
      std::vector<grpc::Slice> slices;
      response.Dump(&slices);
      for (const grpc::Slice& s : slices) {
        reply->append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
  }
  return status;
}

// Bytes no lightrl.v1 message parses: a field tag announcing 100 bytes of a
// length-delimited field, followed by only 3.
inline std::string MalformedProtobufBytes() { return std::string("\x0a\x64\x01\x02\x03", 5); }

}  // namespace lightrl
