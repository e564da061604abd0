package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

var (
	sidecarBin string
	binDir     string // built-in strategies and the faulty test plugin
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	if os.Getenv(parentHelperEnv) != "" {
		return runParentHelper()
	}
	dir, err := os.MkdirTemp("", "e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	binDir = dir
	builds := [][2]string{{testbin.Sidecar, "swiftmoe-sidecar"}, {testbin.FaultyPlugin, "swiftmoe-strategy-faulty"}}
	for _, s := range []string{"swiftmoe", "static", "flexmoe"} {
		builds = append(builds, [2]string{testbin.Strategy(s), "swiftmoe-strategy-" + s})
	}
	for _, b := range builds {
		if _, err := testbin.Build(dir, b[0], b[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	sidecarBin = dir + "/swiftmoe-sidecar"
	return m.Run()
}

// syncBuffer collects a process's stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// sidecar is a running swiftmoe-sidecar serve process.
type sidecar struct {
	cmd    *exec.Cmd
	url    string // listening address, as printed
	stderr *syncBuffer
	exited chan struct{}
	err    error // Wait's result, set before exited closes
}

// startSidecar runs swiftmoe-sidecar serve with args and waits (up to 30s)
// for its "listening on" line.
func startSidecar(t testing.TB, args ...string) *sidecar {
	t.Helper()
	cmd := exec.Command(sidecarBin, append([]string{"serve"}, args...)...)
	s := &sidecar{cmd: cmd, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = s.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := firstLine(stdout)
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		// SIGTERM first, so the sidecar stops its plugins and removes its
		// socket; SIGKILL only if it does not exit.
		select {
		case <-s.exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-s.exited
		}
	})
	select {
	case line := <-lines:
		url, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok {
			t.Fatalf("first stdout line %q, want 'listening on ADDRESS'; stderr:\n%s", line, s.stderr)
		}
		s.url = url
	case <-time.After(30 * time.Second):
		t.Fatalf("no listening line within 30s; stderr:\n%s", s.stderr)
	}
	return s
}

// firstLine reads a serve process's stdout: the first line (its "listening
// on ADDRESS") goes to the channel, and the rest is drained, so that the
// pipe never fills.
func firstLine(stdout io.Reader) <-chan string {
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, r)
	}()
	return lines
}

// startParent starts cmd, a process that starts a sidecar, and returns its
// stdout and a channel closed once it has been waited for; the test's end
// kills it.
func startParent(t *testing.T, cmd *exec.Cmd) (io.Reader, <-chan struct{}) {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-waited })
	return stdout, waited
}

// client connects to the sidecar.
func (s *sidecar) client(t testing.TB) pb.PlannerClient {
	t.Helper()
	conn, err := grpc.NewClient(s.url, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pb.NewPlannerClient(conn)
}

var metricsURLRE = regexp.MustCompile(`url=(http://\S+/metrics)`)

// metricsURL finds the /metrics address the sidecar logged.
func (s *sidecar) metricsURL(t testing.TB) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := metricsURLRE.FindStringSubmatch(s.stderr.String()); m != nil {
			return m[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the sidecar logged no metrics url; stderr:\n%s", s.stderr)
	return ""
}

// stop sends sig and waits up to 15s for the exit, returning Wait's error.
func (s *sidecar) stop(t testing.TB, sig syscall.Signal) error {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.exited:
		return s.err
	case <-time.After(15 * time.Second):
		t.Fatalf("the sidecar did not exit within 15s of %v; stderr:\n%s", sig, s.stderr)
		return nil
	}
}

// plugins returns the pids of the sidecar's child processes.
func (s *sidecar) plugins(t testing.TB) []int {
	t.Helper()
	pids, err := testbin.Children(s.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
