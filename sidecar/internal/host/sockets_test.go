package host

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/testbin"
)

// Plugins listen on sockets in the host's private directory: a plugin killed
// mid-life (here by a crash, then a restart) and the host's Close leave no
// socket file or directory behind in $TMPDIR.
func TestPluginSocketsAreCleanedUp(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	h, err := New(Options{Dir: pluginsDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
		t.Fatal(err)
	}
	first := h.PID("faulty")
	socks, _ := filepath.Glob(filepath.Join(h.sockDir, "*"))
	if len(socks) != 1 {
		t.Fatalf("got sockets %v in %s, want the one plugin's", socks, h.sockDir)
	}
	if _, err := h.Plan(ctx, "faulty", request("crash")); err == nil {
		t.Fatal("a crashing plugin returned a plan")
	}
	if _, err := h.Plan(ctx, "faulty", request("ok")); err != nil {
		t.Fatalf("after the crash: %v", err)
	}
	if err := testbin.WaitGone(first, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		socks, _ = filepath.Glob(filepath.Join(h.sockDir, "*"))
		if len(socks) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(socks) != 1 {
		t.Errorf("after a crash and a restart: sockets %v, want only the new plugin's", socks)
	}
	h.Close()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "plugin") || strings.HasPrefix(e.Name(), "swiftmoe-plugin-sockets-") {
			left = append(left, e.Name())
		}
	}
	if len(left) > 0 {
		t.Errorf("left in $TMPDIR after Close: %s", fmt.Sprint(left))
	}
}
