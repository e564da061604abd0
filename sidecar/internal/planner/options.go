package planner

import (
	"fmt"
	"math"
	"strconv"
)

// Sidecar-level strategy options: the sidecar reads them to predict loads and
// does not pass them to the strategy.
const (
	OptPredictor   = "predictor"
	OptEWMAAlpha   = "ewma_alpha"
	OptWindow      = "predictor_window"
	OptHedgeSigmas = "hedge_sigmas"
)

// Predictors.
const (
	// PredictLast predicts the last iteration's loads.
	PredictLast = "last"
	// PredictEWMA predicts their exponentially weighted moving average.
	PredictEWMA = "ewma"
	// PredictMax predicts each expert's largest load of the last
	// predictor_window iterations.
	PredictMax = "max"
	// PredictHedge predicts the last loads plus hedge_sigmas standard
	// deviations of each expert's load over the last predictor_window
	// iterations: spare replicas for the experts whose load swings.
	PredictHedge = "hedge"
)

// Predictor defaults.
const (
	// DefaultEWMAAlpha is the weight of the newest iteration in the EWMA.
	DefaultEWMAAlpha = 0.5
	// DefaultWindow is the iterations max and hedge look back over.
	DefaultWindow = 4
	// DefaultHedgeSigmas is the standard deviations hedge adds.
	DefaultHedgeSigmas = 1.0
	// maxHedgeSigmas bounds hedge_sigmas.
	maxHedgeSigmas = 100
)

// predictorConfig is how a job predicts the next iteration's loads.
type predictorConfig struct {
	kind   string
	alpha  float64
	window int
	sigmas float64
}

// parsePredictor reads the sidecar-level options, adding a problem per bad
// option.
func parsePredictor(opts map[string]string, p *problems) predictorConfig {
	cfg := predictorConfig{kind: PredictLast, alpha: DefaultEWMAAlpha, window: DefaultWindow, sigmas: DefaultHedgeSigmas}
	if v, ok := opts[OptPredictor]; ok {
		switch v {
		case PredictLast, PredictEWMA, PredictMax, PredictHedge:
			cfg.kind = v
		default:
			p.addf("strategy_options[%q]: unknown predictor %q; use %q (the last iteration's loads), %q (exponentially weighted moving average), %q (each expert's largest load of the last %s iterations) or %q (the last loads plus %s standard deviations over that window)",
				OptPredictor, v, PredictLast, PredictEWMA, PredictMax, OptWindow, PredictHedge, OptHedgeSigmas)
		}
	}
	if v, ok := opts[OptWindow]; ok {
		w, err := strconv.Atoi(v)
		switch {
		case err != nil || w < 1 || w > DefaultHistory:
			p.addf("strategy_options[%q]: %q is not an iteration count in 1..%d; use e.g. %d", OptWindow, v, DefaultHistory, DefaultWindow)
		default:
			cfg.window = w
		}
		if cfg.kind != PredictMax && cfg.kind != PredictHedge {
			p.addf("strategy_options[%q] is set but predictor is %q; set %s=%s or %s=%s, or drop %s", OptWindow, cfg.kind, OptPredictor, PredictMax, OptPredictor, PredictHedge, OptWindow)
		}
	}
	if v, ok := opts[OptHedgeSigmas]; ok {
		x, err := strconv.ParseFloat(v, 64)
		switch {
		case err != nil || math.IsNaN(x) || math.IsInf(x, 0) || x < 0 || x > maxHedgeSigmas:
			p.addf("strategy_options[%q]: %q is not a number in [0, %d]; use e.g. %g", OptHedgeSigmas, v, maxHedgeSigmas, DefaultHedgeSigmas)
		default:
			cfg.sigmas = x
		}
		if cfg.kind != PredictHedge {
			p.addf("strategy_options[%q] is set but predictor is %q; set %s=%s or drop %s", OptHedgeSigmas, cfg.kind, OptPredictor, PredictHedge, OptHedgeSigmas)
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

// sidecarOptions are the options the sidecar reads itself.
var sidecarOptions = []string{OptPredictor, OptEWMAAlpha, OptWindow, OptHedgeSigmas}

// isSidecarOption reports whether key is read by the sidecar itself.
func isSidecarOption(key string) bool {
	for _, o := range sidecarOptions {
		if key == o {
			return true
		}
	}
	return false
}

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
	switch c.kind {
	case PredictEWMA:
		return fmt.Sprintf("ewma(alpha=%g)", c.alpha)
	case PredictMax:
		return fmt.Sprintf("max(window=%d)", c.window)
	case PredictHedge:
		return fmt.Sprintf("hedge(window=%d, sigmas=%g)", c.window, c.sigmas)
	}
	return c.kind
}
