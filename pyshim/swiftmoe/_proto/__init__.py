"""Generated gRPC/protobuf code of the swiftmoe.v1 bridge (see bridge/proto). Do not edit."""
