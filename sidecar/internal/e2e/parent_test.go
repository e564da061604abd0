package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// parentHelperEnv turns the test binary into a trainer's rank 0 (see
// runParentHelper); its value is the plugins directory, and
// parentHelperBinEnv names the sidecar binary.
const (
	parentHelperEnv    = "SWIFTMOE_E2E_PARENT_HELPER"
	parentHelperBinEnv = "SWIFTMOE_E2E_PARENT_HELPER_SIDECAR"
	// parentHelperLife bounds how long a helper lives if nobody kills it.
	parentHelperLife = 2 * time.Minute
)

// runParentHelper starts the sidecar the way the Python shim's
// ManagedSidecar does (serve --exit-with-parent, stdout and stderr piped to
// this process, a session of its own, the default private socket
// directory), prints "PID ADDRESS" once it listens, and then only drains its
// pipes, like the shim's reader threads, until it is killed.
func runParentHelper() int {
	cmd := exec.Command(os.Getenv(parentHelperBinEnv), "serve", "--exit-with-parent", "--plugins-dir", os.Getenv(parentHelperEnv))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()
	lines := firstLine(stdout)
	select {
	case line := <-lines:
		url, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok {
			fmt.Fprintf(os.Stderr, "sidecar printed %q, want 'listening on ADDRESS'\n", line)
			return 1
		}
		fmt.Printf("%d %s\n", cmd.Process.Pid, url)
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "the sidecar printed no listening line within 30s")
		return 1
	}
	time.Sleep(parentHelperLife)
	return 0
}

// TestKilledParentLeavesNothing kills the sidecar's parent with SIGKILL, as
// when a trainer's rank 0 is killed: the sidecar's stdout and stderr pipes
// lose their reader, and the sidecar must still stop its plugins and remove
// its socket, its plugins' sockets and its private directory.
func TestKilledParentLeavesNothing(t *testing.T) {
	tmp := t.TempDir()
	parent := exec.Command(os.Args[0])
	parent.Env = append(os.Environ(), parentHelperEnv+"="+binDir, parentHelperBinEnv+"="+sidecarBin, "TMPDIR="+tmp)
	parent.Stderr = os.Stderr
	out, waited := startParent(t, parent)
	type started struct {
		pid int
		url string
		err error
	}
	got := make(chan started, 1)
	go func() {
		var s started
		_, s.err = fmt.Fscan(out, &s.pid, &s.url)
		got <- s
	}()
	var sc started
	select {
	case sc = <-got:
		if sc.err != nil {
			t.Fatalf("reading the helper's sidecar pid and address: %v", sc.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the helper reported no sidecar within 60s")
	}
	t.Cleanup(func() { _ = syscall.Kill(sc.pid, syscall.SIGKILL) })
	sock, ok := strings.CutPrefix(sc.url, "unix://")
	if !ok || filepath.Dir(filepath.Dir(sock)) != tmp {
		t.Fatalf("address %q: want the default socket in a private directory under %s", sc.url, tmp)
	}
	dir := filepath.Dir(sock)

	// A registered job starts a plugin, whose socket is in dir/plugins.
	s := &sidecar{url: sc.url}
	ctx := ctxT(t, 60*time.Second)
	if _, err := s.client(t).RegisterJob(ctx, registerReq("job", "swiftmoe", nil)); err != nil {
		t.Fatal(err)
	}
	plugins, err := testbin.Children(sc.pid)
	if err != nil || len(plugins) != 1 {
		t.Fatalf("plugin processes of the sidecar: %v (%v), want 1", plugins, err)
	}
	if entries, err := os.ReadDir(filepath.Join(dir, "plugins")); err != nil || len(entries) == 0 {
		t.Fatalf("%s/plugins: %d entries (%v), want the plugin's socket", dir, len(entries), err)
	}

	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the killed helper was not reaped within 10s")
	}
	if err := testbin.WaitGone(sc.pid, 10*time.Second); err != nil {
		t.Fatalf("sidecar after its parent was killed: %v", err)
	}
	for _, pid := range plugins {
		if err := testbin.WaitGone(pid, 10*time.Second); err != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("plugin after the sidecar stopped: %v", err)
		}
	}
	var left []string
	_ = filepath.WalkDir(tmp, func(path string, _ os.DirEntry, err error) error {
		if path != tmp {
			left = append(left, path)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("left behind after the parent was killed: %v", left)
	}
}
