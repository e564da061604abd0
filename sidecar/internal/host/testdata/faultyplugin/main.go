// Command faultyplugin is a strategy plugin for the sidecar's tests. It plans
// the static layout, or misbehaves on command through its "mode" option:
//
//	ok       answer the static plan
//	slow     sleep for the "delay" option, then answer the static plan
//	hang     never answer
//	crash    exit the process in the middle of the call
//	error    answer with an error
//	garbage  answer a plan holding an out-of-range expert id
//	short    answer one layer fewer than asked
//
// When the "mode_file" option names a readable file, its content overrides
// "mode", so a test can change the behaviour of a registered job.
//
// When the "marker" option names a file, the plugin writes it (holding its
// pid) as soon as a call arrives, so a test knows the call is in flight.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

type faulty struct{}

func (faulty) Info() sdk.Info {
	return sdk.Info{
		Name:        "faulty",
		Description: "test strategy that misbehaves on command",
		Version:     "test",
		Options: []sdk.Option{
			{Name: "mode", Description: "ok, slow, hang, crash, error, garbage or short", Default: "ok",
				Type: sdk.OptionEnum, Values: []string{"ok", "slow", "hang", "crash", "error", "garbage", "short"}},
			{Name: "delay", Description: "sleep of mode slow (Go duration)", Default: "0s"},
			{Name: "marker", Description: "file written when a call arrives", Default: ""},
			{Name: "mode_file", Description: "file whose content overrides mode", Default: ""},
		},
	}
}

func (faulty) Plan(ctx context.Context, req *sdk.Request) (*sdk.Response, error) {
	if m := req.Options["marker"]; m != "" {
		if err := os.WriteFile(m, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			return nil, err
		}
	}
	static := func() *sdk.Response {
		resp := &sdk.Response{Note: "static"}
		for _, l := range req.Layers {
			resp.Layers = append(resp.Layers, sdk.StaticSlots(l.NumExperts, req.Topology))
		}
		return resp
	}
	mode := req.Options["mode"]
	if f := req.Options["mode_file"]; f != "" {
		if data, err := os.ReadFile(f); err == nil {
			mode = strings.TrimSpace(string(data))
		}
	}
	switch mode {
	case "", "ok":
		return static(), nil
	case "slow":
		d, err := time.ParseDuration(req.Options["delay"])
		if err != nil {
			return nil, fmt.Errorf("option delay: %w", err)
		}
		time.Sleep(d)
		return static(), nil
	case "hang":
		time.Sleep(time.Hour)
		return nil, errors.New("woke up")
	case "crash":
		os.Exit(3)
		return nil, nil
	case "error":
		return nil, errors.New("planned failure")
	case "garbage":
		resp := static()
		resp.Layers[0][0] = req.Layers[0].NumExperts + 7
		return resp, nil
	case "short":
		resp := static()
		resp.Layers = resp.Layers[:len(resp.Layers)-1]
		return resp, nil
	default:
		return nil, fmt.Errorf("option mode: unknown value %q", mode)
	}
}

func main() { sdk.Serve(faulty{}) }
