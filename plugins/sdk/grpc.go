package sdk

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/internal/transport"
)

// GRPCClient is the sidecar's side of the adapter pair: a Strategy that
// forwards to a plugin process over gRPC. It names a current placement that
// equals one of the plugin's recent responses instead of sending it (see
// internal/transport/refs.go).
type GRPCClient struct {
	Client pb.StrategyClient
	got    transport.ReceivedResponses
}

var _ Strategy = (*GRPCClient)(nil)

// Info calls Describe with a short deadline; a failure yields an Info that
// carries only the error in its Description.
func (c *GRPCClient) Info() Info {
	ctx, cancel := context.WithTimeout(context.Background(), infoTimeout)
	defer cancel()
	info, err := c.Describe(ctx)
	if err != nil {
		return Info{Description: fmt.Sprintf("describe failed: %v", err)}
	}
	return info
}

// Describe is Info with a caller's context and the error returned.
func (c *GRPCClient) Describe(ctx context.Context) (Info, error) {
	resp, err := c.Client.Describe(ctx, &pb.DescribeRequest{})
	if err != nil {
		return Info{}, err
	}
	return InfoFromProto(resp), nil
}

// Plan forwards a planning call to the plugin.
func (c *GRPCClient) Plan(ctx context.Context, req *Request) (*Response, error) {
	ref := c.got.Find(len(req.Layers), func(l int) []int { return req.Layers[l].Current })
	resp, err := c.planByRef(ctx, req, ref)
	if err != nil {
		return nil, err
	}
	out := ResponseFromProto(resp)
	c.got.Keep(resp.GetResponseId(), out.Layers)
	return out, nil
}

// ValidateOptions asks the plugin to check a job's options (its
// OptionValidator, else ValidateDeclared over its declared options). It
// returns an *OptionsError when the plugin refuses them and nil when it
// accepts them or was built before the check existed (it answers
// UNIMPLEMENTED); any other error means the plugin could not be asked.
func (c *GRPCClient) ValidateOptions(ctx context.Context, opts map[string]string) error {
	resp, err := c.Client.ValidateOptions(ctx, &pb.ValidateOptionsRequest{Options: opts})
	switch {
	case status.Code(err) == codes.Unimplemented:
		return nil
	case err != nil:
		return err
	case len(resp.GetProblems()) > 0:
		return &OptionsError{Problems: resp.GetProblems()}
	}
	return nil
}

// planByRef sends req with its current placement named by ref, and again
// with the slots when the plugin no longer holds ref.
func (c *GRPCClient) planByRef(ctx context.Context, req *Request, ref uint64) (*pb.StrategyPlanResponse, error) {
	msg := requestToProto(req, ref == 0)
	msg.CurrentRef = ref
	resp, err := c.Client.Plan(ctx, msg)
	if ref != 0 && transport.IsStaleRef(err) {
		return c.Client.Plan(ctx, requestToProto(req, true))
	}
	return resp, err
}

// GRPCServer is the plugin's side of the adapter pair: it serves Impl, and
// keeps its last responses for requests that name them (see
// internal/transport/refs.go).
type GRPCServer struct {
	pb.UnimplementedStrategyServer
	Impl Strategy
	sent transport.SentResponses
}

// Describe serves Impl.Info.
func (s *GRPCServer) Describe(context.Context, *pb.DescribeRequest) (*pb.StrategyInfo, error) {
	return InfoToProto(s.Impl.Info()), nil
}

// ValidateOptions serves Impl's OptionValidator, or ValidateDeclared over
// the options Impl declares when it has none. Problems are the answer, not a
// failed call.
func (s *GRPCServer) ValidateOptions(_ context.Context, req *pb.ValidateOptionsRequest) (*pb.ValidateOptionsResponse, error) {
	if err := validateOptions(s.Impl, req.GetOptions()); err != nil {
		var oe *OptionsError
		if errors.As(err, &oe) {
			return &pb.ValidateOptionsResponse{Problems: oe.Problems}, nil
		}
		return &pb.ValidateOptionsResponse{Problems: []string{strings.TrimPrefix(err.Error(), ErrBadOption.Error()+": ")}}, nil
	}
	return &pb.ValidateOptionsResponse{}, nil
}

// validateOptions is s's OptionValidator, or ValidateDeclared over its Info.
func validateOptions(s Strategy, opts map[string]string) error {
	if opts == nil {
		opts = map[string]string{}
	}
	if v, ok := s.(OptionValidator); ok {
		return v.ValidateOptions(opts)
	}
	return ValidateDeclared(opts, s.Info().Options)
}

// Plan serves Impl.Plan.
func (s *GRPCServer) Plan(ctx context.Context, req *pb.StrategyPlanRequest) (*pb.StrategyPlanResponse, error) {
	if req.GetCurrentRef() != 0 {
		if err := s.sent.Resolve(req); err != nil {
			return nil, err
		}
	}
	resp, err := s.Impl.Plan(ctx, RequestFromProto(req))
	if err != nil {
		return nil, err
	}
	out := ResponseToProto(resp)
	out.ResponseId = s.sent.Name(out.GetLayers())
	return out, nil
}
