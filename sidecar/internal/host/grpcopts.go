package host

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// dialOptions are the gRPC options of the sidecar's connection to a plugin,
// on top of go-plugin's (TLS, unlimited message sizes): the flow-control
// window and buffers the plugin's server uses too (sdk.WindowBytes,
// sdk.BufferBytes).
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(sdk.WindowBytes),
		grpc.WithInitialConnWindowSize(sdk.WindowBytes),
		grpc.WithWriteBufferSize(sdk.BufferBytes),
		grpc.WithReadBufferSize(sdk.BufferBytes),
		experimental.WithBufferPool(sdk.BufferPool),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(sdk.Codec)),
	}
}
