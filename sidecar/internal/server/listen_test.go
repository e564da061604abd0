package server

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultListenIsPrivate(t *testing.T) {
	l, err := Listen("", false)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimPrefix(l.URL, "unix://")
	if !strings.HasPrefix(l.URL, "unix:///") || filepath.Base(path) != SocketName {
		t.Fatalf("URL: got %q, want unix:///.../%s", l.URL, SocketName)
	}
	dir := filepath.Dir(path)
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{dir, 0o700}, {path, 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("%s: mode %o, want %o", c.path, got, c.want)
		}
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	_ = conn.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("private directory %s still exists after Close (%v)", dir, err)
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.sock")
	l, err := Listen("unix://"+path, false)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, %v; want mode 600", fi.Mode(), err)
	}
	if _, err := Listen("unix://"+path, false); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second listener on a live socket: got %v, want an in-use error", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket still exists after Close")
	}
	// A stale socket (bound, never closed cleanly) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = stale.Close()
	l, err = Listen("unix://"+path, false)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	_ = l.Close()
}

func TestListenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr   string
		remote bool
		want   string
	}{
		{"unix://relative.sock", false, "must be absolute"},
		{"unix://" + file, false, "not a socket"},
		{"unix:///" + strings.Repeat("x", 200), false, "the limit is 107"},
		{"tcp://0.0.0.0:0", false, "not a loopback address"},
		{"tcp://10.1.2.3:50051", false, "--allow-remote"},
		{"tcp://127.0.0.1", false, "want HOST:PORT"},
		{"http://127.0.0.1:80", false, "use unix:///abs/path.sock or tcp://"},
		{"127.0.0.1:80", false, "use unix:///abs/path.sock or tcp://"},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			l, err := Listen(tc.addr, tc.remote)
			if err == nil {
				_ = l.Close()
				t.Fatalf("got a listener, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestListenTCP(t *testing.T) {
	for _, c := range []struct {
		addr   string
		remote bool
	}{{"tcp://127.0.0.1:0", false}, {"tcp://localhost:0", false}, {"tcp://0.0.0.0:0", true}} {
		l, err := Listen(c.addr, c.remote)
		if err != nil {
			t.Errorf("%s: %v", c.addr, err)
			continue
		}
		if !strings.HasPrefix(l.URL, "tcp://") || strings.HasSuffix(l.URL, ":0") {
			t.Errorf("%s: URL %q, want tcp:// with the bound port", c.addr, l.URL)
		}
		_ = l.Close()
	}
	if _, err := ServeMetrics("0.0.0.0:0", false, nil); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("metrics on a remote address: got %v, want a --metrics-listen error", err)
	}
}
