package host

import (
	"fmt"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// validateResponse checks a strategy's answer against its request: one
// placement per request layer, each valid under sdk.ValidateSlots.
func validateResponse(req *sdk.Request, resp *sdk.Response) (Reason, error) {
	if resp == nil {
		return ReasonLayerCount, fmt.Errorf("%w: empty response, want %d layers", sdk.ErrInvalidPlan, len(req.Layers))
	}
	if len(resp.Layers) != len(req.Layers) {
		return ReasonLayerCount, fmt.Errorf("%w: %d layers, want %d", sdk.ErrInvalidPlan, len(resp.Layers), len(req.Layers))
	}
	for i, l := range req.Layers {
		if err := sdk.ValidateSlots(resp.Layers[i], l.NumExperts, req.Topology); err != nil {
			return ReasonInvalidSlots, fmt.Errorf("layer %d: %w", l.Layer, err)
		}
	}
	return "", nil
}
