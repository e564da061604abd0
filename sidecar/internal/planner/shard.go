package planner

import pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"

// ShardBounds returns the chunk [offset, offset+length) of an expert's
// flattened parameters (numel elements) that rank r of n owns:
// [r*numel/n, (r+1)*numel/n) with integer floor division. The Python engine
// computes the same formula.
func ShardBounds(numel uint64, r, n int) (offset, length uint64) {
	lo := uint64(r) * numel / uint64(n)
	hi := uint64(r+1) * numel / uint64(n)
	return lo, hi - lo
}

// shardLayout returns every layer's static shard ownership.
func shardLayout(numel []uint64, worldSize int) []*pb.LayerShardLayout {
	out := make([]*pb.LayerShardLayout, len(numel))
	for l, n := range numel {
		ranges := make([]*pb.ShardRange, worldSize)
		for r := range ranges {
			off, length := ShardBounds(n, r, worldSize)
			ranges[r] = &pb.ShardRange{Rank: uint32(r), Offset: off, Length: length}
		}
		out[l] = &pb.LayerShardLayout{Layer: uint32(l), ExpertParamNumel: n, Ranges: ranges}
	}
	return out
}
