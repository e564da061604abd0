package sdk

import (
	"time"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

const infoTimeout = 5 * time.Second

// TopologyFromProto converts the wire form of a topology.
func TopologyFromProto(t *pb.Topology) Topology {
	if t == nil {
		return Topology{}
	}
	return Topology{
		WorldSize:          int(t.GetWorldSize()),
		RanksPerNode:       int(t.GetRanksPerNode()),
		SlotsPerRank:       int(t.GetSlotsPerRank()),
		IntraNodeBandwidth: t.GetIntraNodeBandwidth(),
		InterNodeBandwidth: t.GetInterNodeBandwidth(),
	}
}

// TopologyToProto converts a topology to its wire form.
func TopologyToProto(t Topology) *pb.Topology {
	return &pb.Topology{
		WorldSize:          uint32(t.WorldSize),
		RanksPerNode:       uint32(t.RanksPerNode),
		SlotsPerRank:       uint32(t.SlotsPerRank),
		IntraNodeBandwidth: t.IntraNodeBandwidth,
		InterNodeBandwidth: t.InterNodeBandwidth,
	}
}

// CostModelFromProto converts the wire form of a cost model (nil: unknown).
func CostModelFromProto(c *pb.CostModel) CostModel {
	return CostModel{
		TokenBytes:        c.GetTokenBytes(),
		FlopsPerToken:     c.GetFlopsPerToken(),
		FlopsPerSecond:    c.GetFlopsPerSecond(),
		BurstSlotsPerRank: int(c.GetBurstSlotsPerRank()),
		BurstThreshold:    c.GetBurstThreshold(),
	}
}

// CostModelToProto converts a cost model to its wire form; nil when every
// field is unknown, so that requests without one stay as they were.
func CostModelToProto(c CostModel) *pb.CostModel {
	if c.TokenBytes == 0 && len(c.FlopsPerToken) == 0 && c.FlopsPerSecond == 0 && c.BurstSlotsPerRank == 0 && c.BurstThreshold == 0 {
		return nil
	}
	return &pb.CostModel{
		TokenBytes: c.TokenBytes, FlopsPerToken: c.FlopsPerToken, FlopsPerSecond: c.FlopsPerSecond,
		BurstSlotsPerRank: uint32(c.BurstSlotsPerRank), BurstThreshold: c.BurstThreshold,
	}
}

// IntsFromProto widens wire ids to ints.
func IntsFromProto(v []uint32) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

// IntsToProto narrows ids to their wire form. Callers validate ranges first.
func IntsToProto(v []int) []uint32 {
	out := make([]uint32, len(v))
	for i, x := range v {
		out[i] = uint32(x)
	}
	return out
}

// RequestToProto converts a planning request to its wire form. The layers'
// messages and current slots share one allocation each.
func RequestToProto(r *Request) *pb.StrategyPlanRequest { return requestToProto(r, true) }

// requestToProto is RequestToProto, leaving the current slots out unless
// withCurrent (the request then names them by current_ref).
func requestToProto(r *Request, withCurrent bool) *pb.StrategyPlanRequest {
	out := &pb.StrategyPlanRequest{
		Topology:             TopologyToProto(r.Topology),
		Iteration:            r.Iteration,
		Options:              r.Options,
		ExpertWeightBytes:    r.ExpertWeightBytes,
		ExpertOptimizerBytes: r.ExpertOptimizerBytes,
		CostModel:            CostModelToProto(r.CostModel),
		Layers:               make([]*pb.StrategyLayerInput, len(r.Layers)),
	}
	msgs := make([]pb.StrategyLayerInput, len(r.Layers))
	var ids []uint32
	if withCurrent {
		ids = make([]uint32, 0, totalLen(r.Layers, func(l *LayerInput) int { return len(l.Current) }))
	}
	for i := range r.Layers {
		l := &r.Layers[i]
		start := len(ids)
		if withCurrent {
			for _, x := range l.Current {
				ids = append(ids, uint32(x))
			}
		}
		m := &msgs[i]
		m.Layer = uint32(l.Layer)
		m.NumExperts = uint32(l.NumExperts)
		m.PredictedLoad = l.Predicted
		m.LastLoad = l.LastLoad
		m.CurrentSlots = ids[start:len(ids):len(ids)]
		m.EarlierLoads = loadsToProto(l.Earlier)
		out.Layers[i] = m
	}
	return out
}

// loadsToProto wraps reports in their wire messages (nil for none); the
// token slices are shared, not copied.
func loadsToProto(reports [][]uint64) []*pb.LayerLoads {
	if len(reports) == 0 {
		return nil
	}
	msgs := make([]pb.LayerLoads, len(reports))
	out := make([]*pb.LayerLoads, len(reports))
	for i, r := range reports {
		msgs[i].Tokens = r
		out[i] = &msgs[i]
	}
	return out
}

// loadsFromProto is loadsToProto's inverse (nil for none).
func loadsFromProto(reports []*pb.LayerLoads) [][]uint64 {
	if len(reports) == 0 {
		return nil
	}
	out := make([][]uint64, len(reports))
	for i, r := range reports {
		out[i] = r.GetTokens()
	}
	return out
}

// RequestFromProto converts a wire request into the SDK's form. The layers'
// current slots share one allocation.
func RequestFromProto(r *pb.StrategyPlanRequest) *Request {
	in := r.GetLayers()
	out := &Request{
		Topology:             TopologyFromProto(r.GetTopology()),
		Iteration:            r.GetIteration(),
		Options:              r.GetOptions(),
		ExpertWeightBytes:    r.GetExpertWeightBytes(),
		ExpertOptimizerBytes: r.GetExpertOptimizerBytes(),
		CostModel:            CostModelFromProto(r.GetCostModel()),
		Layers:               make([]LayerInput, len(in)),
	}
	ids := make([]int, 0, totalLen(in, func(l **pb.StrategyLayerInput) int { return len((*l).GetCurrentSlots()) }))
	for i, l := range in {
		start := len(ids)
		for _, x := range l.GetCurrentSlots() {
			ids = append(ids, int(x))
		}
		out.Layers[i] = LayerInput{
			Layer:      int(l.GetLayer()),
			NumExperts: int(l.GetNumExperts()),
			Predicted:  l.GetPredictedLoad(),
			LastLoad:   l.GetLastLoad(),
			Current:    ids[start:len(ids):len(ids)],
			Earlier:    loadsFromProto(l.GetEarlierLoads()),
		}
	}
	return out
}

// ResponseToProto converts a strategy's response to its wire form. Negative
// ids cannot be carried and become out-of-range ids that validation rejects.
// The layers' messages and slots share one allocation each.
func ResponseToProto(r *Response) *pb.StrategyPlanResponse {
	out := &pb.StrategyPlanResponse{
		MigratedBytes: r.MigratedBytes,
		Note:          r.Note,
		Layers:        make([]*pb.StrategyLayerOutput, len(r.Layers)),
	}
	msgs := make([]pb.StrategyLayerOutput, len(r.Layers))
	ids := make([]uint32, 0, totalLen(r.Layers, func(s *[]int) int { return len(*s) }))
	for i, slots := range r.Layers {
		start := len(ids)
		for _, x := range slots {
			ids = append(ids, uint32(x))
		}
		msgs[i].Slots = ids[start:len(ids):len(ids)]
		out.Layers[i] = &msgs[i]
	}
	return out
}

// ResponseFromProto converts a wire response into the SDK's form. The
// layers' slots share one allocation.
func ResponseFromProto(r *pb.StrategyPlanResponse) *Response {
	in := r.GetLayers()
	out := &Response{
		MigratedBytes: r.GetMigratedBytes(),
		Note:          r.GetNote(),
		Layers:        make([][]int, len(in)),
	}
	ids := make([]int, 0, totalLen(in, func(l **pb.StrategyLayerOutput) int { return len((*l).GetSlots()) }))
	for i, l := range in {
		start := len(ids)
		for _, x := range l.GetSlots() {
			ids = append(ids, int(x))
		}
		out.Layers[i] = ids[start:len(ids):len(ids)]
	}
	return out
}

// totalLen sums size over the elements of v.
func totalLen[T any](v []T, size func(*T) int) int {
	n := 0
	for i := range v {
		n += size(&v[i])
	}
	return n
}

// InfoToProto converts strategy info to its wire form.
func InfoToProto(i Info) *pb.StrategyInfo {
	out := &pb.StrategyInfo{Name: i.Name, Description: i.Description, Version: i.Version, LoadWindowOption: i.LoadWindowOption}
	for _, o := range i.Options {
		out.Options = append(out.Options, &pb.OptionSpec{
			Name: o.Name, Description: o.Description, DefaultValue: o.Default,
			Type: string(o.Type), Min: o.Min, Max: o.Max, Values: o.Values,
		})
	}
	return out
}

// InfoFromProto converts wire strategy info into the SDK's form.
func InfoFromProto(i *pb.StrategyInfo) Info {
	out := Info{Name: i.GetName(), Description: i.GetDescription(), Version: i.GetVersion(), LoadWindowOption: i.GetLoadWindowOption()}
	for _, o := range i.GetOptions() {
		out.Options = append(out.Options, Option{
			Name: o.GetName(), Description: o.GetDescription(), Default: o.GetDefaultValue(),
			Type: OptionType(o.GetType()), Min: o.GetMin(), Max: o.GetMax(), Values: o.GetValues(),
		})
	}
	return out
}
