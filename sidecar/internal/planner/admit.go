package planner

import (
	"context"
	"errors"
	"fmt"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
)

// admit decides how job j, being registered, plans with its strategy. It
// checks the plugin's binary against the digest the job first saw (Trust),
// describes the strategy, and has the strategy check the job's options.
//
// It returns the strategy's description and, when the job starts on a
// fallback, the reason and the note of its initial plan: ReasonRefused for a
// binary that is not the one trusted (j.refused then says why, and the job's
// reports never reach the plugin), ReasonUnavailable for a plugin that cannot
// start (tried again at each report). An error refuses the registration:
// options the strategy does not declare or refuses, each problem naming the
// option and the fix.
func (s *Service) admit(ctx context.Context, j *job, req *pb.RegisterJobRequest) (host.Info, host.Reason, string, error) {
	name := j.strategy
	what := fallbackWhat(j.fallbackSource())
	var refusal *host.Refusal
	digest, err := s.strategies.Trust(name, req.GetStrategySha256())
	switch {
	case errors.As(err, &refusal):
		j.refused = err.Error()
		info := host.Info{Info: sdk.Info{Name: name, Description: "refused: " + err.Error()}, SHA256: digest}
		return info, host.ReasonRefused, fmt.Sprintf("strategy %q: %v; serving %s", name, err, what), nil
	case err != nil:
		s.log.Warn("could not check the strategy plugin's digest", "job", j.id, "strategy", name, "error", err)
	}
	info, err := s.strategies.Info(ctx, name)
	if err != nil {
		reason := host.ReasonUnavailable
		if errors.As(err, &refusal) {
			j.refused, reason = err.Error(), host.ReasonRefused
		}
		s.log.Warn("registering job with an unavailable strategy", "job", j.id, "strategy", name, "error", err)
		info.Name = name
		info.Description = "unavailable: " + err.Error()
		if info.SHA256 == "" {
			info.SHA256 = digest
		}
		return info, reason, fmt.Sprintf("strategy %q is unavailable (%v); serving %s until it loads", name, err, what), nil
	}
	if digest != "" {
		info.SHA256 = digest
	}
	var p problems
	declared := make([]string, len(info.Options))
	for i, o := range info.Options {
		declared[i] = o.Name
	}
	checkOptionNames(req.GetStrategyOptions(), name, declared, &p)
	if err := p.err("RegisterJobRequest"); err != nil {
		return info, "", "", err
	}
	var oe *sdk.OptionsError
	switch err := s.strategies.ValidateOptions(ctx, name, j.options); {
	case errors.As(err, &oe):
		for _, problem := range oe.Problems {
			p.addf("strategy_options: %s (strategy %q)", problem, name)
		}
		return info, "", "", p.err("RegisterJobRequest")
	case err != nil:
		// The options could not be checked now; Plan checks them again.
		s.log.Warn("the strategy could not check the job's options; they are checked at each plan", "job", j.id, "strategy", name, "error", err)
	}
	if j.hadValid {
		return info, "", "the placement in force; no loads reported yet", nil
	}
	return info, "", "initial static expert-parallel placement; no loads reported yet", nil
}
