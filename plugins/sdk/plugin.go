package sdk

import (
	"context"
	"os"
	"runtime/debug"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/internal/transport"
)

// PluginName is the key of the strategy in the go-plugin plugin map.
const PluginName = "strategy"

// BinaryPrefix is the file-name prefix of strategy plugin binaries: the
// strategy NAME is served by the binary swiftmoe-strategy-NAME.
const BinaryPrefix = "swiftmoe-strategy-"

// Handshake is the go-plugin handshake shared by the sidecar and every
// strategy plugin. Bump ProtocolVersion on an incompatible change to the
// Strategy service.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  2, // 2: slot ids are fixed32 on the wire
	MagicCookieKey:   "SWIFTMOE_STRATEGY_PLUGIN",
	MagicCookieValue: "7f1c0a9e-swiftmoe-strategy",
}

// StrategyPlugin is the go-plugin Plugin that carries a Strategy over gRPC.
// Plugin binaries set Impl; the sidecar leaves it nil.
type StrategyPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Strategy
}

var _ plugin.GRPCPlugin = (*StrategyPlugin)(nil)

// GRPCServer registers the Strategy service in a plugin process.
func (p *StrategyPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterStrategyServer(s, &GRPCServer{Impl: p.Impl})
	return nil
}

// GRPCClient returns a Strategy that calls a plugin process.
func (p *StrategyPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &GRPCClient{Client: pb.NewStrategyClient(c)}, nil
}

// PluginMap is the plugin map the sidecar dispenses strategies from.
func PluginMap() map[string]plugin.Plugin {
	return map[string]plugin.Plugin{PluginName: &StrategyPlugin{}}
}

// gcPercent is the plugin's GOGC. A plugin's live heap is small and its
// garbage comes in bursts of a few MB per plan; collecting less often saves
// about a millisecond of CPU per plan of a large job.
const gcPercent = 400

// grpcServer is go-plugin's server with the transport tuning of the plugin
// connection (transport.PluginServerOptions).
func grpcServer(opts []grpc.ServerOption) *grpc.Server {
	return plugin.DefaultGRPCServer(append(opts, transport.PluginServerOptions()...))
}

// Serve runs s as a plugin process; it is the whole body of a plugin's main
// and returns only when the sidecar ends the plugin.
func Serve(s Strategy) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         map[string]plugin.Plugin{PluginName: &StrategyPlugin{Impl: s}},
		GRPCServer:      grpcServer,
	})
}
