package planner

import pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"

// remapTraffic is the weight transfer of every remap of a job: every slot of
// the next plan receives every shard of its expert except the one its own
// rank owns. Rank r thus receives, per slot it holds, numel minus its own
// shard, and sends its shard to every slot on another rank. It depends only
// on the job's shape, so a job computes it once.
type remapTraffic struct {
	send, recv []uint64
	total      uint64
}

// newRemapTraffic sizes the shards from numel[l] (one entry per layer) and
// bytesPerParam.
func newRemapTraffic(numel []uint64, bytesPerParam uint64, worldSize, slotsPerRank int) remapTraffic {
	send := make([]uint64, worldSize)
	recv := make([]uint64, worldSize)
	// Every rank holds slotsPerRank slots and receives, for each, the
	// shards it does not own; it sends its own shard to each slot on
	// another rank.
	others := uint64((worldSize - 1) * slotsPerRank)
	for _, n := range numel {
		for r := 0; r < worldSize; r++ {
			_, own := ShardBounds(n, r, worldSize)
			recv[r] += uint64(slotsPerRank) * (n - own) * bytesPerParam
			send[r] += others * own * bytesPerParam
		}
	}
	var total uint64
	for _, b := range send {
		total += b
	}
	return remapTraffic{send: send, recv: recv, total: total}
}

// summary is the remap from the plan in force (prev, nil when there is
// none) to next. The summary owns copies of the byte counts, so plans share
// nothing mutable.
func (t remapTraffic) summary(prev, next [][]int) *pb.RemapSummary {
	var changed uint64
	for l, slots := range next {
		if prev == nil {
			changed += uint64(len(slots))
			continue
		}
		for i, e := range slots {
			if prev[l][i] != e {
				changed++
			}
		}
	}
	buf := make([]uint64, 2*len(t.send))
	send, recv := buf[:len(t.send):len(t.send)], buf[len(t.send):]
	copy(send, t.send)
	copy(recv, t.recv)
	return &pb.RemapSummary{SendBytes: send, RecvBytes: recv, TotalBytes: t.total, ChangedSlots: changed}
}

// remapSummary is the remap from prev to next of a job whose layers have
// numel[l] parameters of bytesPerParam bytes per expert (see remapTraffic).
func remapSummary(prev, next [][]int, numel []uint64, bytesPerParam uint64, worldSize, slotsPerRank int) *pb.RemapSummary {
	return newRemapTraffic(numel[:len(next)], bytesPerParam, worldSize, slotsPerRank).summary(prev, next)
}
