package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// maxUnixPath is the longest socket path the kernel accepts (sun_path less
// its terminating NUL).
const maxUnixPath = 107

// SocketName is the socket file in the default private directory.
const SocketName = "sidecar.sock"

// Listener is a bound gRPC endpoint and what must be removed when it closes.
type Listener struct {
	net.Listener
	// URL is what the daemon prints: unix:///abs/path.sock or tcp://host:port.
	URL string
	// privateDir is the directory created for the default socket, removed
	// on Close.
	privateDir string
	socket     string
}

// PrivateDir is the private directory created for the default socket, or
// "" when the address was given.
func (l *Listener) PrivateDir() string { return l.privateDir }

// Close stops listening and removes the socket file and private directory.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if l.socket != "" {
		if rerr := os.Remove(l.socket); rerr != nil && !os.IsNotExist(rerr) && err == nil {
			err = rerr
		}
	}
	if l.privateDir != "" {
		if rerr := os.RemoveAll(l.privateDir); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// Listen binds addr: "" for a socket sidecar.sock (mode 0600) in a fresh
// private directory (mode 0700) under os.TempDir(); unix:///abs/path.sock; or
// tcp://HOST:PORT, where HOST must be loopback unless allowRemote. An address
// of the wrong form fails as CheckListen says, before anything is created.
func Listen(addr string, allowRemote bool) (*Listener, error) {
	network, where, err := parseListen(addr, allowRemote)
	if err != nil {
		return nil, err
	}
	switch network {
	case "unix":
		return listenUnix(where)
	case "tcp":
		ln, err := net.Listen("tcp", where)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", addr, err)
		}
		return &Listener{Listener: ln, URL: "tcp://" + ln.Addr().String()}, nil
	}
	dir, err := os.MkdirTemp("", "swiftmoe-sidecar-")
	if err != nil {
		return nil, fmt.Errorf("--listen: creating the private socket directory: %w", err)
	}
	l, err := listenUnix(filepath.Join(dir, SocketName))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	l.privateDir = dir
	return l, nil
}

// CheckListen checks the form of a --listen address without binding it: a
// scheme it knows, an absolute socket path the kernel accepts, HOST:PORT
// with a loopback HOST unless allowRemote. Its errors are mistakes in the
// command line; Listen's other errors come from the machine.
func CheckListen(addr string, allowRemote bool) error {
	_, _, err := parseListen(addr, allowRemote)
	return err
}

// parseListen splits a checked --listen address into its network ("unix",
// "tcp", or "" for the default socket) and path or HOST:PORT.
func parseListen(addr string, allowRemote bool) (network, where string, err error) {
	switch {
	case addr == "":
		return "", "", nil
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if !filepath.IsAbs(path) {
			return "", "", fmt.Errorf("--listen %q: the socket path must be absolute, as in unix:///run/user/1000/swiftmoe.sock", addr)
		}
		path = filepath.Clean(path)
		if len(path) > maxUnixPath {
			return "", "", socketPathError(path)
		}
		return "unix", path, nil
	case strings.HasPrefix(addr, "tcp://"):
		hostPort := strings.TrimPrefix(addr, "tcp://")
		if err := CheckHostPort("--listen", hostPort, allowRemote); err != nil {
			return "", "", err
		}
		return "tcp", hostPort, nil
	default:
		return "", "", fmt.Errorf("--listen %q: use unix:///abs/path.sock or tcp://127.0.0.1:PORT", addr)
	}
}

func socketPathError(path string) error {
	return fmt.Errorf("--listen: socket path %s is %d bytes, the limit is %d; use a shorter path or TMPDIR", path, len(path), maxUnixPath)
}

// listenUnix binds a unix socket with mode 0600. An existing socket nobody
// listens on (left by a crashed sidecar) is replaced; any other existing file
// is an error.
func listenUnix(path string) (*Listener, error) {
	if len(path) > maxUnixPath {
		return nil, socketPathError(path)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--listen: %s exists and is not a socket; remove it or choose another path", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("--listen: %s is in use by another server; choose another path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("--listen: removing stale socket %s: %w", path, err)
		}
	}
	// Bind with a umask that leaves the socket 0600 from its creation, so
	// no other user can connect in the window before a chmod.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--listen unix://%s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("--listen: setting mode 0600 on %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return &Listener{Listener: ln, URL: "unix://" + path, socket: path}, nil
}

// CheckHostPort checks a HOST:PORT address; HOST must be a loopback name or
// address unless allowRemote. flag names the flag in errors.
func CheckHostPort(flag, hostPort string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return fmt.Errorf("%s %q: want HOST:PORT, as in 127.0.0.1:9464: %v", flag, hostPort, err)
	}
	if port == "" {
		return fmt.Errorf("%s %q: the port is missing; use PORT 0 for any free port", flag, hostPort)
	}
	if allowRemote || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("%s %q: %q is not a loopback address; use 127.0.0.1, ::1 or localhost, or pass --allow-remote to listen beyond this machine", flag, hostPort, host)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
