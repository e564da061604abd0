// Package transport tunes the gRPC connections of the sidecar: the
// connection between the sidecar and a strategy plugin (both ends), and the
// sidecar's own server. It holds what a strategy author never needs to see:
// the buffer pool and codec, flow-control window and buffer sizes, message
// limits, and the caches that let a planning request name the placement in
// force instead of carrying it (refs.go).
//
// plugins/sdk (the plugin's end) and sidecar/internal/host (the sidecar's
// end) use it; that is why it sits at the module root.
package transport

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
)

// MaxMessageBytes bounds one planning request or response on the plugin's
// gRPC server. gRPC's default of 4 MiB is below the requests of the largest
// jobs the sidecar accepts (millions of slots), which would otherwise be
// refused on every call.
const MaxMessageBytes = 256 << 20

// WindowBytes is the HTTP/2 flow-control window, per stream and per
// connection, that each end of the sidecar-plugin connection grants the other.
// gRPC's default of 64 KiB makes a plan of a large job (hundreds of KB on
// the wire) stop several times and wait for the reader to be scheduled and
// return a WINDOW_UPDATE; with a window above any plan's size it flows in
// one go. A fixed window also turns off gRPC's bandwidth probing pings, which
// buy nothing on a local socket.
const WindowBytes = 16 << 20

// BufferBytes sizes the connection's read and write buffers at both ends, so
// that a message of a few hundred KB goes out in a few writes rather than one
// per 32 KiB (gRPC's default).
const BufferBytes = 512 << 10

// PluginServerOptions are the gRPC options of a plugin's server, added to
// go-plugin's: the message limit raised, and flow control and buffers sized
// for plans of a few hundred KB on a local socket.
func PluginServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.InitialWindowSize(WindowBytes),
		grpc.InitialConnWindowSize(WindowBytes),
		grpc.ReadBufferSize(BufferBytes),
		grpc.WriteBufferSize(BufferBytes),
		experimental.BufferPool(BufferPool),
		grpc.ForceServerCodecV2(Codec),
	}
}

// PluginDialOptions are the gRPC options of the sidecar's connection to a
// plugin, on top of go-plugin's (TLS, unlimited message sizes): the
// flow-control window and buffers the plugin's server uses too.
func PluginDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(WindowBytes),
		grpc.WithInitialConnWindowSize(WindowBytes),
		grpc.WithWriteBufferSize(BufferBytes),
		grpc.WithReadBufferSize(BufferBytes),
		experimental.WithBufferPool(BufferPool),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(Codec)),
	}
}
