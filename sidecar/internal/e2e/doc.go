// Package e2e holds the sidecar's real-process tests and benchmarks: the
// swiftmoe-sidecar binary, built by TestMain, serving real plugin binaries,
// driven over gRPC and signals as the Python shim drives it.
package e2e
