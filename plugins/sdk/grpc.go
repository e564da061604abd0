package sdk

import (
	"context"
	"fmt"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// GRPCClient is the sidecar's side of the adapter pair: a Strategy that
// forwards to a plugin process over gRPC.
type GRPCClient struct {
	Client pb.StrategyClient
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
	resp, err := c.Client.Plan(ctx, RequestToProto(req))
	if err != nil {
		return nil, err
	}
	return ResponseFromProto(resp), nil
}

// GRPCServer is the plugin's side of the adapter pair: it serves Impl.
type GRPCServer struct {
	pb.UnimplementedStrategyServer
	Impl Strategy
}

// Describe serves Impl.Info.
func (s *GRPCServer) Describe(context.Context, *pb.DescribeRequest) (*pb.StrategyInfo, error) {
	return InfoToProto(s.Impl.Info()), nil
}

// Plan serves Impl.Plan.
func (s *GRPCServer) Plan(ctx context.Context, req *pb.StrategyPlanRequest) (*pb.StrategyPlanResponse, error) {
	resp, err := s.Impl.Plan(ctx, RequestFromProto(req))
	if err != nil {
		return nil, err
	}
	return ResponseToProto(resp), nil
}
