package planner

import (
	"fmt"
	"math"
	"strconv"
)

// Sidecar-level strategy options: the sidecar reads them to predict loads and
// does not pass them to the strategy.
const (
	OptPredictor = "predictor"
	OptEWMAAlpha = "ewma_alpha"
)

// Predictors.
const (
	PredictLast = "last"
	PredictEWMA = "ewma"
)

// DefaultEWMAAlpha is the weight of the newest iteration in the EWMA.
const DefaultEWMAAlpha = 0.5

// predictorConfig is how a job predicts the next iteration's loads.
type predictorConfig struct {
	kind  string
	alpha float64
}

// parsePredictor reads the sidecar-level options, adding a problem per bad
// option.
func parsePredictor(opts map[string]string, p *problems) predictorConfig {
	cfg := predictorConfig{kind: PredictLast, alpha: DefaultEWMAAlpha}
	if v, ok := opts[OptPredictor]; ok {
		switch v {
		case PredictLast, PredictEWMA:
			cfg.kind = v
		default:
			p.addf("strategy_options[%q]: unknown predictor %q; use %q (the last iteration's loads) or %q (exponentially weighted moving average)", OptPredictor, v, PredictLast, PredictEWMA)
		}
	}
	if v, ok := opts[OptEWMAAlpha]; ok {
		a, err := strconv.ParseFloat(v, 64)
		switch {
		case err != nil || math.IsNaN(a) || math.IsInf(a, 0):
			p.addf("strategy_options[%q]: %q is not a number; use a value in (0, 1], e.g. 0.5", OptEWMAAlpha, v)
		case a <= 0 || a > 1:
			p.addf("strategy_options[%q]: %v is out of range; use a value in (0, 1], e.g. 0.5", OptEWMAAlpha, a)
		default:
			cfg.alpha = a
		}
		if opts[OptPredictor] != PredictEWMA {
			p.addf("strategy_options[%q] is set but predictor is %q; set %s=%s or drop %s", OptEWMAAlpha, cfg.kind, OptPredictor, PredictEWMA, OptEWMAAlpha)
		}
	}
	return cfg
}

// isSidecarOption reports whether key is read by the sidecar itself.
func isSidecarOption(key string) bool { return key == OptPredictor || key == OptEWMAAlpha }

// strategyOptions returns opts without the sidecar-level options.
func strategyOptions(opts map[string]string) map[string]string {
	out := make(map[string]string, len(opts))
	for k, v := range opts {
		if !isSidecarOption(k) {
			out[k] = v
		}
	}
	return out
}

// String renders the predictor for logs and notes.
func (c predictorConfig) String() string {
	if c.kind == PredictEWMA {
		return fmt.Sprintf("ewma(alpha=%g)", c.alpha)
	}
	return c.kind
}
