package host

import "google.golang.org/grpc"

// windowBytes is the HTTP/2 flow-control window, per stream and per
// connection, that the sidecar grants a plugin. gRPC's default of 64 KiB
// makes a plugin stop several times per plan of a large job (64 layers x
// 1024 slots is about 70 KB on the wire) and wait for the sidecar to be
// scheduled and return a WINDOW_UPDATE; with a window above any plan's size
// the answer flows in one go. A fixed window also turns off gRPC's bandwidth
// probing pings, which buy nothing on a local socket.
const windowBytes = 16 << 20

// bufferBytes sizes the connection's read and write buffers, so that a
// request of a few hundred KB goes out in a few writes rather than one per
// 32 KiB (gRPC's default).
const bufferBytes = 512 << 10

// dialOptions are the gRPC options of the sidecar's connection to a plugin,
// on top of go-plugin's (TLS, unlimited message sizes).
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(windowBytes),
		grpc.WithInitialConnWindowSize(windowBytes),
		grpc.WithWriteBufferSize(bufferBytes),
		grpc.WithReadBufferSize(bufferBytes),
	}
}
